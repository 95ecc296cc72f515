// Copy buttons: <button type="button" data-copy-target="ID"> copies the text of the element with that id.
// The Clipboard API where the page may use it; otherwise the old execCommand("copy"); failing both, the text
// is selected so that Ctrl+C (or ⌘C) copies it. Buttons start hidden and are shown only when this script runs,
// so without JavaScript the values are still there to select by hand.
(function () {
  "use strict";

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function legacyCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    document.body.removeChild(area);
    return copied;
  }

  function report(button, source, copied) {
    var status = document.getElementById(button.getAttribute("aria-describedby") || "");
    if (!copied) {
      selectText(source);
    }
    if (status) {
      status.textContent = copied ? "Copied." : "Selected: press Ctrl+C to copy.";
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy-target]");
    if (!button) {
      return;
    }
    var source = document.getElementById(button.getAttribute("data-copy-target"));
    if (!source) {
      return;
    }
    var text = source.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { report(button, source, true); },
        function () { report(button, source, legacyCopy(text)); }
      );
    } else {
      report(button, source, legacyCopy(text));
    }
  });

  document.querySelectorAll("button[data-copy-target]").forEach(function (button) {
    button.hidden = false;
  });
})();

// The one-time setup link carries its code after "#": browsers never send that part to the server, so it
// stays out of access logs. Move it into the form's field, then take it off the address bar and history.
(function () {
  "use strict";
  var field = document.getElementById("setup-token");
  if (!field || window.location.hash.length < 2) {
    return;
  }
  field.value = decodeURIComponent(window.location.hash.slice(1));
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
})();
