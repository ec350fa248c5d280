// Swagger UI for /openapi.json, started from this file rather than an inline script so that the page's
// Content-Security-Policy (scripts from this origin only) holds. The assets come from the server itself,
// so the docs work with no network.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
