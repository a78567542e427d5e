//! HTTP routes, one module per group: request → domain call → response. Each exposes
//! `router()` (or `router(state)` when it attaches a rate limit), merged in `app::api`.

pub mod admin;
// example-domain:begin
pub mod attachments;
// example-domain:end
pub mod auth;
pub mod docs;
// example-domain:begin
pub mod events;
// example-domain:end
pub mod health;
// example-domain:begin
pub mod invoices;
// example-domain:end
pub mod metrics;
pub mod openapi;
// example-domain:begin
pub mod stats;
pub mod webhooks;
// example-domain:end
