//! Integration tests over real HTTP on 127.0.0.1: one binary, one module per area.

mod helpers;
mod infra;

mod accounts;
mod cli;
mod core;
mod deploy;
mod docs;
mod drills;
mod events;
mod hardening;
mod invoices;
mod managed;
mod migrations;
mod observability;
mod query_plans;
mod rate_limits;
mod security;
mod stats;
mod webhooks;
