// Starts Swagger UI on /docs. A file of this site, not an inline script, so the page keeps the strict CSP.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No validity badge fetched from swagger.io: this page talks to this site only.
    validatorUrl: null,
  });
})();
