//! HTTP routes, one module per group. Each exposes `router()`, merged in [`crate::app::routes`].

pub mod auth;
pub mod docs;
pub mod events;
pub mod health;
pub mod invoices;
pub mod openapi;
pub mod stats;
pub mod webhooks;
