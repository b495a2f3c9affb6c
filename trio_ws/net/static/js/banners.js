// Banners: one dismissable warning per source, from the server or from this page.

import { $, el } from "./dom.js";

const banners = new Map();

export function showBanner(source, content, fromServer = false, label = source) {
  let banner = banners.get(source);
  if (!banner) {
    banner = el("div", "banner");
    banner.dataset.source = source;
    const close = el("button", null, "×");
    close.type = "button";
    close.title = "dismiss";
    close.addEventListener("click", () => clearBanner(source));
    banner.append(el("span", "source", label), el("span", "content"), close);
    banners.set(source, banner);
    $("banners").append(banner);
  }
  banner.querySelector(".content").textContent = String(content);
  banner.dataset.origin = fromServer ? "server" : "page";
}

export function clearBanner(source) {
  const banner = banners.get(source);
  if (banner) {
    banner.remove();
    banners.delete(source);
  }
}

export function clearServerBanners() {
  // The server repeats its standing warnings after every snapshot.
  for (const [source, banner] of [...banners]) {
    if (banner.dataset.origin === "server") clearBanner(source);
  }
}
