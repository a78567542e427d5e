// Starts Swagger UI on /openapi.json. A file of its own rather than an inline script, so the
// page runs under the Content-Security-Policy without 'unsafe-inline'.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    // The default sends the document to validator.swagger.io; nothing leaves this server.
    validatorUrl: null,
  });
});
