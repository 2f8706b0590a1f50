//! `keygate signing-key rotate` and `keygate signing-key list`, against the same store as
//! the servers and safe while they run: they pick the new key up on their next reload
//! (`KEYGATE_KEY_RELOAD_INTERVAL`), or at once when they meet a token signed with it.

use anyhow::Context;
use clap::Subcommand;

use crate::{
    config::Settings,
    service, startup,
    store::{self, SigningKeyRecord},
};

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Make a new key (of KEYGATE_SIGNING_ALG) the one that signs. The previous key stays in
    /// the JWKS and keeps verifying until every token it signed has expired.
    Rotate,
    /// Show the signing keys: the active one, and retired ones while they still verify.
    List,
}

pub async fn run(command: SigningKeyCommand, settings: &Settings) -> anyhow::Result<()> {
    let store = startup::open_existing_store(settings).await?;
    let sealer = startup::key_sealer(&startup::existing_master_key(settings)?);
    match command {
        SigningKeyCommand::Rotate => {
            let records = store.signing_keys().await?;
            // A key sealed under another master key would leave every server unable to
            // sign after its next reload, and unable to start. Proving that this master key
            // opens the current key first makes that mistake impossible.
            if !records.is_empty() {
                service::read_key_ring(store.as_ref(), &sealer, settings.token_ttl).await.context(
                    "the master key does not open the current signing key: run with the servers' \
                     KEYGATE_MASTER_KEY (or data directory)",
                )?;
            }
            let previous = records.iter().find(|r| r.retired_at.is_none()).map(|r| r.key.kid.clone());
            let key = sealer.generate(settings.signing_alg)?;
            let now = store::now();
            store.rotate_signing_key(&key, now).await.context("cannot store the new signing key")?;
            service::audit::record_signing_key_rotation(store.as_ref(), previous.as_deref(), &key.kid).await;
            println!("active signing key: {} ({})", key.kid, key.alg);
            if let Some(previous) = previous {
                println!(
                    "retired: {previous}, verifying until {} (Unix time) for tokens it signed",
                    service::verifies_until(now, settings.token_ttl)
                );
            }
            Ok(())
        }
        SigningKeyCommand::List => {
            let now = store::now();
            for record in store.signing_keys().await? {
                if let Some(line) = describe(&record, now, settings.token_ttl) {
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}

/// One line per key that still matters; `None` for keys past their verification window.
fn describe(record: &SigningKeyRecord, now: store::UnixTime, token_ttl: u64) -> Option<String> {
    let key = &record.key;
    match record.retired_at {
        None => Some(format!("{}  {}  active   created {}", key.kid, key.alg, record.created_at)),
        Some(at) => {
            let until = service::verifies_until(at, token_ttl);
            (now < until).then(|| format!("{}  {}  retired  {} (verifies until {until})", key.kid, key.alg, at))
        }
    }
}
