//! HTTP routes, one module per group. Each exposes `router()`, merged in [`crate::app::routes`].

pub mod health;
pub mod openapi;
