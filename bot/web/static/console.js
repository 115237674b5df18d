// Live recipient count and SMS encoding for the broadcast composer (no libraries, no external calls).
(function () {
  "use strict";
  var form = document.getElementById("composer");
  if (!form) { return; }
  var url = form.getAttribute("data-estimate");
  var timer = null;
  function text(id, value) { var el = document.getElementById(id); if (el) { el.textContent = value; } }
  function update() {
    var params = new URLSearchParams();
    ["course", "channel", "language", "progress", "tag", "text_es", "text_en"].forEach(function (name) {
      var field = form.elements[name];
      if (field && field.value) { params.set(name, field.value); }
    });
    fetch(url + "?" + params.toString(), {credentials: "same-origin"})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (data.error) { text("live-count", "–"); text("live-channels", data.error); }
        else {
          text("live-count", String(data.total));
          var parts = Object.keys(data.recipients).sort().map(function (k) { return k + ": " + data.recipients[k]; });
          var cost = data.cost ? "; estimated cost " + data.cost.total.toFixed(2) + " " + data.cost.currency : "";
          text("live-channels", parts.length ? "(" + parts.join(", ") + "; " + data.sms_segments + " SMS segment(s) in all" + cost + ")" : "");
        }
        ["es", "en"].forEach(function (lang) {
          var info = data.sms && data.sms[lang];
          if (!info || !info.units) { text("enc-" + lang, ""); return; }
          var forced = info.ucs2_chars.length ? "; forces UCS-2: " + info.ucs2_chars.join(" ") : "";
          text("enc-" + lang, "SMS: " + info.encoding + ", " + info.units + " characters, " + info.segments + " segment(s)" + forced);
        });
      })
      .catch(function () { text("live-count", "?"); });
  }
  function later() { clearTimeout(timer); timer = setTimeout(update, 300); }
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  update();
}());
