//! Rows to records, once for both backends. Every query selects the same column names with
//! the same kinds of value on SQLite and on PostgreSQL (which casts its uuids to text), so
//! only the row type differs; anything stored that does not parse is `StoreError::Corrupt`.

use std::str::FromStr;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    AccountRecord, AdminExport, AdminId, AdminRecord, AuditEvent, AuditRecord, Counts, KeyAbout, KeyDetails, KeyExport,
    KeyRecord, KeyStatus, NewAdmin, OwnerExport, OwnerRecord, PreviousSecret, Quota, Result, Revocation, SessionExport,
    SessionRecord, SigningKeyRecord, StoreError, StoredCredits, corrupt,
};
use crate::{
    crypto::signing::{SealedKey, SigningAlg},
    domain::{AccountId, AccountName, ApiKeyId, Email, KeyName, KeyRef, Limits, Metadata, OwnerId, Refill, Scopes},
};

/// The column reads the decoders need, by name: what both backends' rows offer.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    i64: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database> + for<'r> Decode<'r, R::Database>,
{
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(col)?)
    }
}

pub(super) fn account_id(row: &impl Columns, col: &str) -> Result<AccountId> {
    AccountId::parse(&row.text(col)?).map_err(corrupt("account id"))
}

pub(super) fn admin_id(row: &impl Columns, col: &str) -> Result<AdminId> {
    uuid::Uuid::try_parse(&row.text(col)?).map(AdminId).map_err(corrupt("admin id"))
}

pub(super) fn key_ref(row: &impl Columns) -> Result<KeyRef> {
    KeyRef::parse(&row.text("key_ref")?).map_err(corrupt("key ref"))
}

fn api_key(row: &impl Columns) -> Result<ApiKeyId> {
    ApiKeyId::parse(&row.text("api_key")?).map_err(corrupt("api key"))
}

fn email(row: &impl Columns) -> Result<Email> {
    Email::parse(&row.text("email")?).map_err(corrupt("email"))
}

fn scopes(row: &impl Columns) -> Result<Scopes> {
    Scopes::from_stored(&row.text("scopes")?).map_err(corrupt("key scopes"))
}

/// `sql::keys::KEY_COLUMNS`.
pub(super) fn key_record(row: &impl Columns) -> Result<KeyRecord> {
    let previous = match (row.opt_bytes("previous_secret_hash")?, row.opt_int("previous_expires_at")?) {
        (Some(hash), Some(until)) => Some(PreviousSecret { hash, until }),
        _ => None,
    };
    Ok(KeyRecord {
        key_ref: key_ref(row)?,
        account_id: account_id(row, "account_id")?,
        api_key: api_key(row)?,
        secret_hash: row.bytes("secret_hash")?,
        created_at: row.int("created_at")?,
        scopes: scopes(row)?,
        expires_at: row.opt_int("expires_at")?,
        enabled: row.opt_int("disabled_at")?.is_none(),
        previous,
    })
}

/// `account_id, scopes, expires_at, disabled_at`, the key's `limits, owner,
/// credits_remaining, credits_refill` and its owner's `owner_limits, owner_credits_remaining,
/// owner_credits_refill`.
pub(super) fn key_status(row: &impl Columns, key_ref: KeyRef) -> Result<KeyStatus> {
    let account = account_id(row, "account_id")?;
    let plan = |remaining: &str, refill_col: &str| -> Result<Option<Option<Refill>>> {
        Ok(match row.opt_int(remaining)? {
            Some(_) => Some(refill(row, refill_col)?),
            None => None,
        })
    };
    let quota = Quota::key(key_ref, &limits(row, "limits")?, plan("credits_remaining", "credits_refill")?);
    let owner = owner(row)?;
    let (owner_limits, owner_credits) =
        (limits(row, "owner_limits")?, plan("owner_credits_remaining", "owner_credits_refill")?);
    let quota = match owner {
        Some(owner) => quota.with_owner(account, &owner, &owner_limits, owner_credits),
        None => quota,
    };
    Ok(KeyStatus {
        account_id: account,
        enabled: row.opt_int("disabled_at")?.is_none(),
        expires_at: row.opt_int("expires_at")?,
        scopes: scopes(row)?,
        quota: quota.of(),
    })
}

pub(super) fn limits(row: &impl Columns, col: &str) -> Result<Limits> {
    Limits::from_stored(row.opt_text(col)?.as_deref()).map_err(corrupt("limits"))
}

fn owner(row: &impl Columns) -> Result<Option<OwnerId>> {
    row.opt_text("owner")?.map(|o| OwnerId::parse(&o).map_err(corrupt("owner"))).transpose()
}

fn refill(row: &impl Columns, col: &str) -> Result<Option<Refill>> {
    row.opt_text(col)?.map(|r| Refill::from_stored(&r).map_err(corrupt("credit refill"))).transpose()
}

/// `credits_remaining, credits_refill, credits_period`.
pub(super) fn stored_credits(row: &impl Columns) -> Result<Option<StoredCredits>> {
    Ok(match row.opt_int("credits_remaining")? {
        Some(remaining) => Some(StoredCredits {
            remaining,
            refill: refill(row, "credits_refill")?,
            period: row.int("credits_period")?,
        }),
        None => None,
    })
}

/// `limits` and the credits' columns of `owners`.
pub(super) fn owner_record(row: &impl Columns) -> Result<OwnerRecord> {
    Ok(OwnerRecord { limits: limits(row, "limits")?, credits: stored_credits(row)? })
}

/// `account_id, owner, updated_at` and `owner_record`'s columns.
pub(super) fn owner_export(row: &impl Columns) -> Result<OwnerExport> {
    Ok(OwnerExport {
        account_id: account_id(row, "account_id")?,
        owner: owner(row)?.ok_or_else(|| StoreError::Corrupt("an owner row without its owner".into()))?,
        record: owner_record(row)?,
        updated_at: row.int("updated_at")?,
    })
}

fn key_name(row: &impl Columns) -> Result<Option<KeyName>> {
    row.opt_text("name")?.map(|n| KeyName::parse(&n).map_err(corrupt("key name"))).transpose()
}

fn metadata(row: &impl Columns) -> Result<Option<Metadata>> {
    row.opt_text("metadata")?.map(|m| Metadata::parse(&m).map_err(corrupt("key metadata"))).transpose()
}

/// `sql::keys::DETAIL_COLUMNS`, and `metadata` when `with_metadata`.
pub(super) fn key_details(row: &impl Columns, with_metadata: bool) -> Result<KeyDetails> {
    Ok(KeyDetails {
        key_ref: key_ref(row)?,
        api_key: api_key(row)?,
        name: key_name(row)?,
        scopes: scopes(row)?,
        created_at: row.int("created_at")?,
        expires_at: row.opt_int("expires_at")?,
        last_used_at: row.opt_int("last_used_at")?,
        enabled: row.opt_int("disabled_at")?.is_none(),
        created_by: row.opt_text("created_by")?.map(|e| Email::parse(&e).map_err(corrupt("email"))).transpose()?,
        metadata: if with_metadata { metadata(row)? } else { None },
        limits: limits(row, "limits")?,
        owner: owner(row)?,
        credits: stored_credits(row)?,
    })
}

/// `KEY_COLUMNS` and `EXPORT_COLUMNS`, as `keygate migrate` copies keys.
pub(super) fn key_export(row: &impl Columns) -> Result<KeyExport> {
    let created_by = row.opt_text("created_by")?;
    Ok(KeyExport {
        record: key_record(row)?,
        about: KeyAbout {
            name: key_name(row)?,
            metadata: metadata(row)?,
            created_by: created_by
                .map(|id| uuid::Uuid::try_parse(&id).map(AdminId).map_err(corrupt("admin id")))
                .transpose()?,
            limits: limits(row, "limits")?,
            owner: owner(row)?,
            credits: stored_credits(row)?,
        },
        last_used_at: row.opt_int("last_used_at")?,
        expiry_audited: row.int("expiry_audited")? != 0,
        disabled_at: row.opt_int("disabled_at")?,
    })
}

/// `id, account_id, email, password_hash`.
pub(super) fn admin_record(row: &impl Columns) -> Result<AdminRecord> {
    Ok(AdminRecord {
        id: admin_id(row, "id")?,
        account_id: account_id(row, "account_id")?,
        email: email(row)?,
        password_hash: row.text("password_hash")?,
    })
}

/// `id, account_id, email, password_hash, created_at`.
pub(super) fn admin_export(row: &impl Columns) -> Result<AdminExport> {
    Ok(AdminExport {
        account_id: account_id(row, "account_id")?,
        admin: NewAdmin {
            id: admin_id(row, "id")?,
            email: email(row)?,
            password_hash: row.text("password_hash")?,
            created_at: row.int("created_at")?,
        },
    })
}

/// `id, name, created_at`.
pub(super) fn account_record(row: &impl Columns) -> Result<AccountRecord> {
    Ok(AccountRecord {
        id: account_id(row, "id")?,
        name: AccountName::parse(&row.text("name")?).map_err(corrupt("account name"))?,
        created_at: row.int("created_at")?,
    })
}

/// `admin_id, account_id, created_at, last_seen_at, expires_at`.
pub(super) fn session_record(row: &impl Columns) -> Result<SessionRecord> {
    Ok(SessionRecord {
        admin_id: admin_id(row, "admin_id")?,
        account_id: account_id(row, "account_id")?,
        created_at: row.int("created_at")?,
        last_seen_at: row.int("last_seen_at")?,
        expires_at: row.int("expires_at")?,
    })
}

/// `id_hash` and the session's columns, as `keygate migrate` copies them.
pub(super) fn session_export(row: &impl Columns) -> Result<SessionExport> {
    let hash = row.bytes("id_hash")?;
    Ok(SessionExport {
        hash: hash.try_into().map_err(|_| StoreError::Corrupt("session digest is not 32 bytes".into()))?,
        session: session_record(row)?,
    })
}

/// `kid, alg, sealed_private, public_key, created_at, retired_at`.
pub(super) fn signing_key(row: &impl Columns) -> Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        key: SealedKey {
            kid: row.text("kid")?,
            alg: SigningAlg::from_str(&row.text("alg")?).map_err(corrupt("signing alg"))?,
            sealed_private: row.bytes("sealed_private")?,
            public_key: row.bytes("public_key")?,
        },
        created_at: row.int("created_at")?,
        retired_at: row.opt_int("retired_at")?,
    })
}

/// `jti, key_ref, expires_at, revoked_at`.
pub(super) fn revocation(row: &impl Columns) -> Result<Revocation> {
    Ok(Revocation {
        jti: row.text("jti")?,
        key_ref: key_ref(row)?,
        expires_at: row.int("expires_at")?,
        revoked_at: row.int("revoked_at")?,
    })
}

/// `id, at, account_id, action, actor, source, target`.
pub(super) fn audit_record(row: &impl Columns) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.int("id")?,
        event: AuditEvent {
            at: row.int("at")?,
            account_id: row
                .opt_text("account_id")?
                .map(|a| AccountId::parse(&a).map_err(corrupt("account id")))
                .transpose()?,
            action: row.text("action")?.parse().map_err(corrupt("audit action"))?,
            actor: row.text("actor")?,
            source: row.opt_text("source")?,
            target: row.opt_text("target")?,
        },
    })
}

/// How many rows each table holds, as one row of `COUNTS`.
pub(super) const COUNTS: &str = "SELECT (SELECT count(*) FROM accounts) AS accounts, \
     (SELECT count(*) FROM admins) AS admins, (SELECT count(*) FROM api_keys) AS keys, \
     (SELECT count(*) FROM owners) AS owners, \
     (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM signing_keys) AS signing_keys, \
     (SELECT count(*) FROM revoked_tokens) AS revocations, (SELECT count(*) FROM audit_log) AS audit";

pub(super) fn counts(row: &impl Columns) -> Result<Counts> {
    let get = |col: &str| row.int(col).map(|n| n.max(0) as u64);
    Ok(Counts {
        accounts: get("accounts")?,
        admins: get("admins")?,
        keys: get("keys")?,
        owners: get("owners")?,
        sessions: get("sessions")?,
        signing_keys: get("signing_keys")?,
        revocations: get("revocations")?,
        audit: get("audit")?,
    })
}
