// cl-lora leaderboard: shows one tab, sorts and filters the rows already in the page.
// The view lives in the URL hash: #stream=SLUG&sort=COLUMN&desc=1&filter=TEXT.
// No libraries, no network (the page is opened from disk).
(function () {
  "use strict";
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.stream"));
  var tabs = Array.prototype.slice.call(document.querySelectorAll("nav.tabs a"));
  var input = document.getElementById("filter");
  var count = document.getElementById("count");

  function readState() {
    var p = new URLSearchParams(location.hash.slice(1));
    return {
      stream: p.get("stream") || "",
      sort: p.get("sort") || "",
      desc: p.get("desc") === "1",
      filter: p.get("filter") || ""
    };
  }

  function writeState(state) {
    var p = new URLSearchParams();
    if (state.stream) p.set("stream", state.stream);
    if (state.sort) p.set("sort", state.sort);
    if (state.sort && state.desc) p.set("desc", "1");
    if (state.filter) p.set("filter", state.filter);
    history.replaceState(null, "", "#" + p.toString());
    apply(state);
  }

  // The sort key of a cell: a number (NaN when empty) or lower-case text.
  function key(cell, numeric) {
    if (!cell) return numeric ? NaN : "";
    if (numeric) return cell.dataset.v === "" ? NaN : parseFloat(cell.dataset.v);
    return cell.textContent.trim().toLowerCase();
  }

  function compare(a, b, numeric, desc) {
    if (numeric) {
      if (isNaN(a) || isNaN(b)) return isNaN(a) - isNaN(b); // empty cells last
      return desc ? b - a : a - b;
    }
    if (a === b) return 0;
    return (a < b) === !desc ? -1 : 1;
  }

  function sortTable(table, state) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var column = -1;
    heads.forEach(function (th, i) {
      var on = th.dataset.key === state.sort;
      if (on) column = i;
      th.setAttribute("aria-sort", on ? (state.desc ? "descending" : "ascending") : "none");
    });
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = column >= 0 && heads[column].dataset.type === "num";
    rows.sort(function (a, b) {
      var order = 0;
      if (column >= 0) {
        order = compare(key(a.cells[column], numeric), key(b.cells[column], numeric), numeric, state.desc);
      }
      return order || a.dataset.i - b.dataset.i; // stable: the page's order breaks ties
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  // A row is shown when its text holds every word of the filter (any case).
  function filterTable(table, state) {
    var words = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (word) { return text.indexOf(word) >= 0; });
      if (!row.hidden) shown += 1;
    });
    return [shown, table.tBodies[0].rows.length];
  }

  function apply(state) {
    var current = sections.filter(function (s) { return s.dataset.stream === state.stream; })[0] || sections[0];
    sections.forEach(function (section) {
      section.hidden = section !== current;
      Array.prototype.forEach.call(section.querySelectorAll("table.board"), function (table) {
        sortTable(table, state);
        var n = filterTable(table, state);
        if (section === current && count) count.textContent = n[0] + " of " + n[1] + " rows";
      });
    });
    tabs.forEach(function (tab) {
      if (current && tab.dataset.stream === current.dataset.stream) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    });
    if (input && input.value !== state.filter) input.value = state.filter;
  }

  tabs.forEach(function (tab) {
    tab.addEventListener("click", function (event) {
      event.preventDefault();
      var state = readState();
      state.stream = tab.dataset.stream;
      writeState(state);
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("table.board thead th"), function (th) {
    th.addEventListener("click", function () {
      var state = readState();
      var section = th.closest("section");
      state.stream = section ? section.dataset.stream : state.stream;
      if (state.sort === th.dataset.key) state.desc = !state.desc;
      else state.desc = th.dataset.better === "high";
      state.sort = th.dataset.key;
      writeState(state);
    });
  });
  if (input) {
    input.addEventListener("input", function () {
      var state = readState();
      state.filter = input.value;
      writeState(state);
    });
  }
  window.addEventListener("hashchange", function () { apply(readState()); });
  if (sections.length) apply(readState());
})();
