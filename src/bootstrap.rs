//! What a first start creates and every later start finds: the data directory, the embedded
//! store's master key, the first admin, the first signing key. Each is made only where there
//! is none yet, and so that of several replicas starting at once exactly one makes it.

use std::{io::IsTerminal, path::Path};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::{
    config::{ConfigError, Settings},
    crypto::{
        MasterKey, private_file,
        signing::{KeySealer, SigningAlg},
    },
    domain::{AccountName, AdminPassword, ApiPassword, Email},
    service::admins::AdminDirectory,
    store::{Store, UnixTime},
};

/// The first admin's generated password, in the data directory.
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";
/// The embedded store's master key, in the data directory, without `KEYGATE_MASTER_KEY`.
const MASTER_KEY_FILE: &str = "master.key";
const DEFAULT_ADMIN_EMAIL: &str = "admin@localhost";
const DEFAULT_ACCOUNT: &str = "default";

/// Creates `dir` (and its parents) if missing, for this user alone.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// The master key: from the settings, or kept in the data directory for the embedded store
/// (made there at the first start). A key found wrong is a setting error (exit code 2).
pub fn master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    match master_key_source(settings)? {
        MasterKeySource::Setting(encoded) => MasterKey::from_base64(encoded.expose_secret())
            .map_err(|e| setting_error("KEYGATE_MASTER_KEY", e.to_string())),
        MasterKeySource::File(path) => {
            create_private_dir(&settings.data_dir)?;
            MasterKey::load_or_create(&path)
                .map_err(|e| setting_error("KEYGATE_MASTER_KEY", format!("from the data directory: {e}")))
        }
    }
}

/// Where the master key comes from, judged as `serve` judges it but without making a key:
/// for `keygate config check`. Describes it (never shows it).
pub fn check_master_key(settings: &Settings) -> anyhow::Result<String> {
    match master_key_source(settings)? {
        MasterKeySource::Setting(encoded) => {
            MasterKey::from_base64(encoded.expose_secret())
                .map_err(|e| setting_error("KEYGATE_MASTER_KEY", e.to_string()))?;
            Ok("(set, hidden)".to_owned())
        }
        MasterKeySource::File(path) if !path.exists() => {
            Ok(format!("(none yet: the first start generates one into {})", path.display()))
        }
        MasterKeySource::File(path) => {
            MasterKey::load(&path)
                .map_err(|e| setting_error("KEYGATE_MASTER_KEY", format!("from the data directory: {e}")))?;
            Ok(format!("(in {}, hidden)", path.display()))
        }
    }
}

enum MasterKeySource<'a> {
    Setting(&'a SecretString),
    File(std::path::PathBuf),
}

fn master_key_source(settings: &Settings) -> anyhow::Result<MasterKeySource<'_>> {
    match &settings.master_key {
        Some(encoded) => Ok(MasterKeySource::Setting(encoded)),
        None if settings.is_embedded() => Ok(MasterKeySource::File(settings.data_dir.join(MASTER_KEY_FILE))),
        // A key generated here would differ on every replica: tokens signed by one would
        // not verify on another, and no replica could open the others' signing keys.
        None => Err(setting_error(
            "KEYGATE_MASTER_KEY",
            "required with PostgreSQL, and the same on every replica (32 random bytes, base64, e.g. \
             `openssl rand -base64 32`)",
        )),
    }
}

/// A setting that only start-up can judge, refused as `Settings::load` refuses one.
pub fn setting_error(name: &'static str, reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ConfigError::new(name, reason))
}

/// The master key for a command other than `serve`: never created here, since a new one
/// would open nothing in the existing store.
pub fn existing_master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if settings.master_key.is_none() && settings.is_embedded() {
        let path = settings.data_dir.join(MASTER_KEY_FILE);
        if !path.exists() {
            anyhow::bail!(
                "no master key at {}: set KEYGATE_MASTER_KEY, or KEYGATE_DATA_DIR to the servers' data directory",
                path.display()
            );
        }
    }
    master_key(settings)
}

/// On a store with no admin, creates the first one: from the bootstrap settings, or
/// `admin@localhost` with a random password written to a private file.
pub async fn first_admin(admins: &AdminDirectory, settings: &Settings) -> anyhow::Result<()> {
    if admins.any().await? {
        return Ok(());
    }
    let (email, password, file) = match &settings.bootstrap_admin {
        Some((email, password)) => (email.clone(), AdminPassword::parse(password.expose()), None),
        None => {
            // Reuse the API-password generator: 190 random bits, nothing to guess.
            let password = AdminPassword::parse(ApiPassword::generate().expose());
            let email = Email::parse(DEFAULT_ADMIN_EMAIL).map_err(|e| anyhow::anyhow!(e))?;
            (email, password, Some(settings.data_dir.join(INITIAL_PASSWORD_FILE)))
        }
    };
    let password = password.map_err(|e| anyhow::anyhow!(e))?;
    // The password is on disk before the admin exists, so a crash in between cannot leave an
    // admin whose password nobody knows. It goes to a file of this attempt's own, renamed
    // into place only if this process created the admin (another replica may win).
    let pending = file.as_ref().map(|path| path.with_extension(format!("{}.pending", Uuid::new_v4().simple())));
    if let Some(pending) = &pending {
        create_private_dir(&settings.data_dir)?;
        write_secret_file(pending, password.expose())?;
    }
    // Kept to be shown once, if generated: `create_first` takes the password itself.
    let shown = file.is_some().then(|| SecretString::from(password.expose()));
    let account = AccountName::parse(DEFAULT_ACCOUNT).map_err(|e| anyhow::anyhow!(e))?;
    let created = admins.create_first(&email, &account, password).await;
    if let (Some(pending), Some(path)) = (&pending, &file) {
        if matches!(created, Ok(true)) {
            std::fs::rename(pending, path).with_context(|| format!("cannot write {}", path.display()))?;
        } else {
            let _ = std::fs::remove_file(pending);
        }
    }
    match (&file, created?) {
        (Some(_), false) | (None, false) => {}
        (Some(path), true) => {
            tracing::info!(email = %email, file = %path.display(), "created the first admin; its password is in the file");
            // Told on the terminal only: stderr that is not a terminal is usually a log.
            if let Some(password) = shown.filter(|_| std::io::stderr().is_terminal()) {
                eprintln!(
                    "\n  First admin: {email}\n  Password:    {}\n  (also in {})\n",
                    password.expose_secret(),
                    path.display()
                );
            }
        }
        (None, true) => {
            tracing::info!(email = %email, "created the first admin from the bootstrap settings")
        }
    }
    Ok(())
}

fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = private_file(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// On a store with no signing key, makes the first one, of `alg`, active from `now`.
///
/// An active key of another algorithm is served as it is: replicas share it, so a replica
/// that rotated because its own setting differs would be rotated back by the next one to
/// start, unaudited. Changing the algorithm is `keygate signing-key rotate --alg`.
pub async fn first_signing_key(
    store: &dyn Store,
    sealer: &KeySealer,
    alg: SigningAlg,
    now: UnixTime,
) -> anyhow::Result<()> {
    let records = store.signing_keys().await?;
    match records.iter().find(|r| r.retired_at.is_none()) {
        None => store.insert_first_signing_key(&sealer.generate(alg)?, now).await?,
        Some(active) if active.key.alg != alg => {
            tracing::warn!(
                kid = %active.key.kid,
                active = %active.key.alg,
                configured = %alg,
                "KEYGATE_SIGNING_ALG is {alg} but the active signing key is {}: serving the active key; \
                 `keygate signing-key rotate --alg {alg}` changes it",
                active.key.alg
            );
        }
        Some(_) => {}
    }
    Ok(())
}
