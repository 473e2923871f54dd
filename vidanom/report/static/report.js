/* vidanom report: sort the events table by a column, and play an event in its clip's video from
 * the event's start. Plain JavaScript; it reads the page's own data-* attributes and fetches nothing.
 * A video that cannot be played says so beside it. Text is never parsed as HTML (no innerHTML): clip names are users' text.
 * The address may ask for an order: index.html#sort=score (highest first) or #sort=order. */
(function () {
  "use strict";

  function sortRows(table, th, descending) {
    var key = th.dataset.sort;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var c = parseFloat(a.dataset[key]) - parseFloat(b.dataset[key]);
      if (c === 0) { c = parseFloat(a.dataset.order) - parseFloat(b.dataset.order); return c; }
      return descending ? -c : c;
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) { fragment.appendChild(row); });
    body.appendChild(fragment);
    table.querySelectorAll("th[data-sort]").forEach(function (other) {
      other.setAttribute("aria-sort", other === th ? (descending ? "descending" : "ascending") : "none");
    });
  }

  function nextDescending(th) {
    var now = th.getAttribute("aria-sort");
    if (now === "ascending") { return true; }
    if (now === "descending") { return false; }
    return th.dataset.first === "desc";
  }

  function setUpTable(table) {
    table.querySelectorAll("th[data-sort]").forEach(function (th) {
      var button = document.createElement("button");
      button.type = "button";
      button.title = "sort by " + th.textContent;
      button.textContent = th.textContent;
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () { sortRows(table, th, nextDescending(th)); });
    });
    var asked = /^#sort=(\w+)$/.exec(window.location.hash);
    var th = asked && table.querySelector('th[data-sort="' + asked[1] + '"]');
    if (th) { sortRows(table, th, th.dataset.first === "desc"); }
  }

  function play(event) {
    var link = event.target.closest && event.target.closest("a[data-video]");
    var video = link && document.getElementById(link.dataset.video);
    if (!video) { return; }
    event.preventDefault();
    document.querySelectorAll(".playing").forEach(function (el) { el.classList.remove("playing"); });
    var row = link.closest("tr, li");
    if (row) { row.classList.add("playing"); }
    var start = parseFloat(link.dataset.start) || 0;
    var go = function () {
      video.currentTime = start;
      var playing = video.play();
      if (playing && playing.catch) { playing.catch(function () {}); }
    };
    video.scrollIntoView({ block: "center", behavior: "smooth" });
    if (video.readyState >= 1) { go(); } else { video.addEventListener("loadedmetadata", go, { once: true }); video.load(); }
  }

  function watchVideo(video) {
    var failed = function () {
      if (video.dataset.state === "error") { return; }
      video.dataset.state = "error";
      var note = document.createElement("p");
      note.className = "note";
      note.textContent = "This browser cannot play this video; open the file itself: " + video.getAttribute("src");
      video.parentNode.insertBefore(note, video.nextSibling);
    };
    if (video.error) { failed(); } else if (video.readyState >= 1) { video.dataset.state = "ready"; }
    video.addEventListener("loadedmetadata", function () { video.dataset.state = "ready"; });
    video.addEventListener("error", failed);
  }

  function start() {
    document.querySelectorAll("video").forEach(watchVideo);
    var table = document.getElementById("events");
    if (table) { setUpTable(table); }
    document.addEventListener("click", play);
    document.documentElement.dataset.ready = "1";
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
