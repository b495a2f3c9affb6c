"""Where a project's history lives: the seam (`interface`) and its backends
(`memory`, `sqlite`, `redis`). Plain values in and out; they know no hubs (rule 4)."""
