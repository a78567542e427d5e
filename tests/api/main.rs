//! Integration tests over real HTTP on 127.0.0.1: one binary, one module per area.

mod helpers;
mod infra;

mod accounts;
mod admin;
mod architecture;
mod backups;
mod cli;
mod core;
mod deploy;
mod docs;
mod drills;
// example-domain:begin
mod events;
mod files;
// example-domain:end
mod hardening;
mod jobs;
// example-domain:begin
mod invoices;
// example-domain:end
mod logging;
mod managed;
mod migrations;
mod observability;
mod rate_limits;
mod security;
mod sessions;
mod storage;
// example-domain:begin
mod query_plans;
mod stats;
mod webhooks;
// example-domain:end
