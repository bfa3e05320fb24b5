// Live parts of the dashboard: every element with data-refresh="URL" has its content replaced
// by that URL's HTML fragment every data-every milliseconds (same origin, same session cookie).
// A fragment holding [data-stop] ends its polling (a finished job changes no more).
"use strict";
(function () {
  function poll(el) {
    var every = parseInt(el.getAttribute("data-every") || "2000", 10);
    function tick() {
      fetch(el.getAttribute("data-refresh"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          el.innerHTML = html;
          if (el.querySelector("[data-stop]")) { return; }
          setTimeout(tick, every);
        })
        .catch(function () { setTimeout(tick, every * 2); });
    }
    if (el.hasAttribute("data-load")) { tick(); } else { setTimeout(tick, every); }
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(poll);
  });
})();
