// The token: the server answered ?token= with an HttpOnly cookie and told the page,
// in a <meta> tag, whether it may send control messages.

import { meta } from "./dom.js";
import { showBanner } from "./banners.js";

const control = meta("trio-ws-control");
export const canControl = control === "on";

export function dropTokenFromUrl() {
  const url = new URL(location.href);
  if (!url.searchParams.has("token")) return;
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

export function explainToken() {
  if (control === "rejected") {
    showBanner("token", "The token in the link was not accepted, so the controls stay hidden.");
  } else if (control === "uncookieable") {
    showBanner(
      "token",
      "The server's token holds characters a cookie cannot carry (such as ; , or spaces), " +
        "so this page cannot keep it; controls stay hidden.",
    );
  }
}
