// Swagger UI for /api-docs: the document comes from this gateway, and nothing is fetched from elsewhere
// (validatorUrl null: no badge from the public validator, which would be sent the document's URL).
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
