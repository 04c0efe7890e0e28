// Convoy's live pages: one server-sent-events stream per tab. Each event committed after
// the page's position triggers one refresh of the page's content (at most one at a time,
// coalesced); the stream resumes from the last position seen, pauses while the tab is
// hidden, reconnects with jittered backoff, and stops for good when the session ends.
(function () {
  "use strict";
  var main = document.getElementById("content");
  var status = document.getElementById("live-status");
  var slider = document.querySelector("[data-travel]");
  if (slider) {
    // Dragging shows the position in the field and goes there on release; with the
    // keyboard, the arrows choose and Enter goes (the Show button works without script).
    var input = document.getElementById("at-input");
    var pointer = false;
    slider.addEventListener("pointerdown", function () { pointer = true; });
    slider.addEventListener("input", function () { input.value = slider.value; });
    slider.addEventListener("change", function () {
      input.value = slider.value;
      if (pointer) { pointer = false; input.form.submit(); }
    });
    slider.addEventListener("keydown", function (e) {
      if (e.key === "Enter") { e.preventDefault(); input.value = slider.value; input.form.submit(); }
    });
  }
  if (!main || main.dataset.live !== "1") return;

  // Countdowns (soak, deploy window) tick down from the seconds the server rendered, by
  // this tab's own clock (never the browser's wall clock, which may be off).
  var rendered = performance.now();
  function words(s) {
    if (s >= 3600) return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + ("0" + s % 60).slice(-2) + "s";
    return s + "s";
  }
  setInterval(function () {
    var elapsed = Math.floor((performance.now() - rendered) / 1000);
    var items = main.querySelectorAll("[data-countdown]");
    for (var i = 0; i < items.length; i++) {
      items[i].textContent = words(Math.max(0, parseInt(items[i].dataset.countdown, 10) - elapsed));
    }
  }, 1000);
  if (!window.EventSource) return;
  var last = main.dataset.position || "";
  var source = null, retry = 0, timer = null, refreshing = false, again = false, ended = false;

  function say(text) { if (status) status.textContent = text; }

  // Never swap a form out from under the keyboard: while the focus is on one of the
  // page's form controls (a field, or the button about to be pressed), the refresh waits
  // until the focus leaves the form (one refresh then, no polling meanwhile).
  var held = false;
  function inForm() {
    var active = document.activeElement;
    return !!(active && main.contains(active) && active.closest && active.closest("form"));
  }
  main.addEventListener("focusout", function () {
    setTimeout(function () { if (held && !inForm()) { held = false; refresh(); } }, 0);
  });

  function refresh() {
    if (inForm()) { held = true; return; }
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { headers: { "X-Convoy-Fragment": "1" }, credentials: "same-origin", redirect: "manual" })
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401) { stop("Signed out: sign in again to follow live."); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        var focused = document.activeElement && document.activeElement.id;
        if (inForm()) { held = true; return; }  // the focus moved into a form meanwhile
        // What the user typed or chose and has not sent yet survives the swap (by id).
        var kept = {};
        var fields = main.querySelectorAll("input[id], textarea[id], select[id]");
        for (var i = 0; i < fields.length; i++) {
          var f = fields[i];
          var changed = f.tagName === "SELECT"
            ? Array.prototype.some.call(f.options, function (o) { return o.selected !== o.defaultSelected; })
            : f.value !== f.defaultValue;
          if (changed) kept[f.id] = f.value;
        }
        main.innerHTML = html;
        rendered = performance.now();
        for (var id in kept) { var g = document.getElementById(id); if (g) g.value = kept[id]; }
        if (focused) { var el = document.getElementById(focused); if (el) el.focus(); }
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; setTimeout(refresh, 300); }
      });
  }

  function stop(text) {
    ended = true;
    if (source) { source.close(); source = null; }
    say(text);
  }

  function connect() {
    if (ended || source || document.hidden) return;
    source = new EventSource("/ui/stream?after=" + encodeURIComponent(last));
    source.addEventListener("open", function () { retry = 0; say("Live"); });
    source.addEventListener("convoy", function (e) {
      if (e.lastEventId) last = e.lastEventId;
      main.dataset.position = last;
      refresh();
    });
    source.addEventListener("error", function () {
      if (!source) return;
      source.close(); source = null;
      // A closed stream may mean the session ended (401): ask once before retrying.
      fetch("/ui/stream?probe=1&after=" + encodeURIComponent(last), { method: "HEAD", credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401 || r.status === 403) { stop("Signed out: sign in again to follow live."); return; }
          schedule();
        }, schedule);
    });
  }

  function schedule() {
    if (ended) return;
    retry = Math.min(retry + 1, 6);
    var delay = Math.min(30000, 500 * Math.pow(2, retry)) * (0.5 + Math.random());
    say("Reconnecting…");
    clearTimeout(timer);
    timer = setTimeout(connect, delay);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      if (source) { source.close(); source = null; }
      clearTimeout(timer);
      say("Paused while hidden");
    } else {
      connect();
    }
  });
  connect();
})();
