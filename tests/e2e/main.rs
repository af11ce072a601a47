//! End-to-end tests: the real `postrider` binary against real SMTP peers and a real DNS server,
#![allow(unreachable_pub)]
//! all on loopback.

mod harness;
mod smtp_client;
mod webdriver;
mod world;

mod admin;
mod async_bounces;
mod bounces;
mod cluster;
mod compat;
mod console;
mod crash;
mod damage;
mod delivery;
mod features;
mod http_api;
mod journal_damage;
mod lifecycle;
mod observability;
mod outbound_tls;
mod proxy_protocol;
mod queue_cli;
mod reload;
mod sandbox;
mod sendmail;
mod startup;
mod storage;
mod tls_reports;
mod unsubscribe;
