//! `keygate signing-key rotate` and `keygate signing-key list`, against the same store as
//! the servers and safe while they run: they pick the new key up on their next reload
//! (`KEYGATE_KEY_RELOAD_INTERVAL`), or at once when they meet a token signed with it.

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::{
    bootstrap,
    clock::Clock,
    config::Settings,
    crypto::signing::SigningAlg,
    service, startup,
    store::{SigningKeyRecord, UnixTime},
};

use super::audit::utc;

#[derive(Debug, Args)]
pub struct SigningKeyArgs {
    #[command(subcommand)]
    pub command: SigningKeyCommand,
    #[command(flatten)]
    pub store: super::StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Make a new key the one that signs. The previous key stays in the JWKS and keeps
    /// verifying until every token it signed has expired. Audited.
    Rotate {
        /// The new key's algorithm: ES256 or EdDSA [default: the active key's; on an empty
        /// store, KEYGATE_SIGNING_ALG]. The only way to change the algorithm of a store's
        /// keys: servers never rotate because their own KEYGATE_SIGNING_ALG differs.
        #[arg(long, value_name = "ALG", value_parser = parse_alg)]
        alg: Option<SigningAlg>,
    },
    /// Show the signing keys: the active one, and retired ones while they still verify.
    List,
}

pub async fn run(command: SigningKeyCommand, settings: &Settings, clock: Clock) -> anyhow::Result<()> {
    let store = startup::open_existing_store(settings).await?;
    let sealer = startup::key_sealer(&bootstrap::existing_master_key(settings)?);
    let now = clock.now();
    match command {
        SigningKeyCommand::Rotate { alg } => {
            let records = store.signing_keys().await?;
            // A key sealed under another master key would leave every server unable to
            // sign after its next reload, and unable to start. Proving that this master key
            // opens the current key first makes that mistake impossible.
            if !records.is_empty() {
                service::read_key_ring(store.as_ref(), &sealer, settings.token_ttl, now).await.context(
                    "the master key does not open the current signing key: run with the servers' \
                     KEYGATE_MASTER_KEY (or data directory)",
                )?;
            }
            let active = records.iter().find(|r| r.retired_at.is_none()).map(|r| &r.key);
            let previous = active.map(|k| k.kid.clone());
            // Keeping the active key's algorithm by default: a CLI run without the servers'
            // settings file must not change the algorithm by accident.
            let alg = alg.or(active.map(|k| k.alg)).unwrap_or(settings.signing_alg);
            let key = sealer.generate(alg)?;
            store.rotate_signing_key(&key, now).await.context("cannot store the new signing key")?;
            let (old, new) = (previous.as_deref(), key.kid.as_str());
            service::audit::record_signing_key_rotation(store.as_ref(), now, old, new, key.alg).await;
            println!("active signing key: {} ({})", key.kid, key.alg);
            if let Some(previous) = previous {
                println!(
                    "retired: {previous}, verifying until {} for tokens it signed",
                    utc(service::verifies_until(now, settings.token_ttl))
                );
            }
            Ok(())
        }
        SigningKeyCommand::List => {
            println!("KID\tALG\tSTATE\tCREATED\tRETIRED\tVERIFIES UNTIL");
            for record in store.signing_keys().await? {
                if let Some(line) = describe(&record, now, settings.token_ttl) {
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}

fn parse_alg(raw: &str) -> Result<SigningAlg, String> {
    raw.parse().map_err(|_| "expected ES256 or EdDSA".to_owned())
}

/// One line per key that still matters, times in RFC 3339; `None` for keys past their
/// verification window.
fn describe(record: &SigningKeyRecord, now: UnixTime, token_ttl: u64) -> Option<String> {
    let key = &record.key;
    let created = utc(record.created_at);
    match record.retired_at {
        None => Some(format!("{}\t{}\tactive\t{created}\t-\t-", key.kid, key.alg)),
        Some(at) => {
            let until = service::verifies_until(at, token_ttl);
            (now < until).then(|| format!("{}\t{}\tretired\t{created}\t{}\t{}", key.kid, key.alg, utc(at), utc(until)))
        }
    }
}
