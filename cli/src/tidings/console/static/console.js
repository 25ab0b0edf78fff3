// Tidings console: the pages work without this file. It refreshes the parts of
// a page marked data-live every few seconds (short polling of the same URL; the
// server renders, this only swaps elements by id), submits the "failed only"
// filter when toggled, and copies the curl example. Hand-written, no build step.
"use strict";

(function () {
  const body = document.body;
  const every = parseInt(body.dataset.pollMs || "2000", 10);

  async function refresh() {
    if (document.hidden || !document.querySelector("[data-live]")) return;
    let response;
    try {
      response = await fetch(location.href, {
        credentials: "same-origin",
        headers: { "X-Console-Live": "1" },
      });
    } catch (_) {
      return; // offline for a moment: the next poll tries again
    }
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const fresh of page.querySelectorAll("[data-live]")) {
      const old = document.getElementById(fresh.id);
      // Keep what the viewer is working in: never swap a region holding focus.
      if (old && !old.contains(document.activeElement)) old.replaceWith(fresh);
    }
  }

  window.setInterval(refresh, every);

  for (const box of document.querySelectorAll("[data-autosubmit]")) {
    box.addEventListener("change", () => box.form.submit());
  }

  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const status = document.querySelector("[data-copy-status]");
      try {
        await navigator.clipboard.writeText(source.textContent);
        if (status) status.textContent = "Copied.";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        if (status) status.textContent = "Selected: press Ctrl+C to copy.";
      }
    });
  }
})();
