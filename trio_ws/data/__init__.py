"""Readers and stores of plain values: the project registry, each project's
features database (progress, the features list). They know no hubs (rule 4)."""
