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
    slider.addEventListener("change", function () {
      var input = document.getElementById("at-input");
      input.value = slider.value;
      input.form.submit();
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

  function refresh() {
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
        var typing = document.activeElement && /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName) && main.contains(document.activeElement);
        if (typing) { again = true; return; }  // never swap a form out from under the keyboard
        main.innerHTML = html;
        rendered = performance.now();
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
