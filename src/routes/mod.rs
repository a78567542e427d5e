//! HTTP routes, one module per group. Each exposes `router()`, merged in [`crate::app::routes`].

pub mod auth;
pub mod docs;
// example-domain:begin
pub mod events;
// example-domain:end
pub mod health;
// example-domain:begin
pub mod invoices;
// example-domain:end
pub mod openapi;
// example-domain:begin
pub mod stats;
pub mod webhooks;
// example-domain:end
