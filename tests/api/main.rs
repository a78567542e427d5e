//! Integration tests over real HTTP on 127.0.0.1: one binary, one module per area.

mod helpers;

mod cli;
mod core;
mod security;
