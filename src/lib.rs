//! `runbook`: an executor for deployment runbooks: typed steps that probe before they act,
//! verify after, run in dependency order, and keep their progress in SQLite or PostgreSQL so
//! that an interrupted run resumes where it stopped. The binary (`src/main.rs`) is `cli::main`.
//!
//! Exit codes: 0 done, 1 a step failed, 2 bad input, 3 locked by another run, 5 stopped
//! awaiting approval, 130 interrupted; `watch --once` 4 unhealthy, `diagnose` 1 when a check
//! fails.

mod approval;
pub mod cli;
mod clock;
mod cloud;
mod commands;
mod crash;
mod emulator;
mod engine;
mod environment;
mod error_chain;
mod event;
mod graph;
mod health;
mod hint;
mod history;
mod identity;
mod image_tag;
mod notify;
mod pg_tls;
mod project;
mod recorder;
mod render;
mod reporter;
mod runbook;
mod secret;
mod state;
mod status;
mod steps;
mod text;
mod watch;
mod web;
