// Sorting and filtering of the unit cards. Reads data-* attributes only; never writes HTML.
(function () {
  "use strict";
  var list = document.getElementById("units");
  var cards = Array.prototype.slice.call(list.querySelectorAll("article.unit"));
  var sortBy = document.getElementById("sort");
  var category = document.getElementById("category");
  var detectorsOnly = document.getElementById("detectors-only");
  var significantOnly = document.getElementById("significant-only");  // only with a significance test
  var search = document.getElementById("search");
  var shown = document.getElementById("shown");

  function num(card, key) { return Number(card.dataset[key]); }
  function byNumber(key, sign) { return function (a, b) { return sign * (num(a, key) - num(b, key)); }; }
  function byLabel(a, b) {
    var la = a.dataset.label, lb = b.dataset.label;
    if ((la === "") !== (lb === "")) return la === "" ? 1 : -1;      // unlabeled units last
    if (la !== lb) return la < lb ? -1 : 1;
    return num(b, "score") - num(a, "score") || num(a, "unit") - num(b, "unit");
  }
  var orders = {
    category: byNumber("rank", 1),
    label: byLabel,
    score: function (a, b) { return num(b, "score") - num(a, "score") || num(a, "unit") - num(b, "unit"); },
    unit: byNumber("unit", 1)
  };

  function matches(card, text) {
    if (category.value && card.dataset.category !== category.value) return false;
    if (detectorsOnly.checked && card.dataset.detector !== "1") return false;
    if (significantOnly && significantOnly.checked && card.dataset.significant !== "1") return false;
    if (!text) return true;
    var label = card.dataset.label.toLowerCase();
    if (text.length > 1 && text[0] === '"' && text[text.length - 1] === '"') return label === text.slice(1, -1);
    var unit = text.replace(/^unit\s*/, "");
    if (/^\d+$/.test(unit)) return card.dataset.unit === String(Number(unit));
    return label.indexOf(text) !== -1;
  }

  function update() {
    var text = search.value.trim().toLowerCase();
    var sorted = cards.slice().sort(orders[sortBy.value] || orders.category);
    var count = 0;
    var moved = document.createDocumentFragment();  // one re-insertion, not one per card
    sorted.forEach(function (card) {
      card.hidden = !matches(card, text);
      if (!card.hidden) count += 1;
      moved.appendChild(card);
    });
    list.appendChild(moved);
    shown.textContent = count + " of " + cards.length + " units";
  }

  // The page is written in the default state (category order, nothing filtered): sort and filter at
  // load only when the browser restored other choices, so a large page draws without moving any card.
  function restored() {
    return sortBy.value !== "category" || category.value !== "" || detectorsOnly.checked ||
      (significantOnly && significantOnly.checked) || search.value.trim() !== "";
  }

  [sortBy, category, detectorsOnly, significantOnly].forEach(function (el) {
    if (el) el.addEventListener("change", update);
  });
  search.addEventListener("input", update);
  Array.prototype.forEach.call(document.querySelectorAll(".chart-box .bar"), function (bar) {
    bar.addEventListener("click", function () {
      search.value = '"' + bar.dataset.label + '"';             // quoted: this label exactly
      category.value = bar.dataset.category;
      detectorsOnly.checked = true;
      update();
      list.scrollIntoView({ behavior: "smooth" });
    });
  });
  if (restored()) update();
})();
