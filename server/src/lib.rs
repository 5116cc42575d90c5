//! exdaas: a durable, sharded JSON key-value server with WebAssembly write
//! plugins.
//!
//! # Layout
//! - [`config`]: settings, their layers (defaults, TOML, environment,
//!   ExDaas aliases) and validation;
//! - [`storage`]: key placement, one persy store + cache + writer thread per
//!   shard, group commit, the id counter;
//! - [`plugin`]: the plugin configuration and the wasm host;
//! - [`plugin_host`]: the active chain and how it changes (reload, uploads);
//! - [`replication`]: a read replica's first copy, following, promotion;
//! - [`app`]: state shared by handlers and the single write path;
//! - [`auth`]: bearer tokens and roles;
//! - [`metrics`]: request, storage and plugin metrics in Prometheus format;
//! - [`http`]: hyper server, routing, request parsing, handlers;
//! - [`ijson`]: the I-JSON rules every stored value must meet;
//! - [`update`]: values computed from the current one (patches, increments);
//! - [`txn`]: transactions as clients ask for them, through the plugins;
//! - [`logsafe`]: escaping and capping client text bound for logs;
//! - [`error`]: request errors and the one place they become HTTP answers;
//! - [`server`]: start-up and shutdown sequence used by the binary;
//! - [`descriptors`]: the open-files limit and the connections' share of it;
//! - [`memory`]: giving memory back to the system after a load;
//! - [`backup`]: the backup format, validation and restore;
//! - [`admin_client`]: the HTTP client behind `exdaas backup`, `health` and `kv`;
//! - [`kv_cli`]: the `exdaas kv` commands;
//! - [`plugin_cli`]: the `exdaas plugin` commands (vectors, one-off calls).

pub mod admin_client;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
pub mod descriptors;
pub mod error;
pub mod http;
pub mod ijson;
pub mod kv_cli;
pub mod logsafe;
pub mod memory;
pub mod metrics;
pub mod metrics_text;
pub mod plugin;
pub mod plugin_cli;
pub mod plugin_host;
pub mod replication;
pub mod server;
pub mod storage;
#[cfg(test)]
mod testgen;
pub mod tls;
pub mod token_cli;
pub mod txn;
pub mod update;
