//! `keygate audit`: reads the audit log straight from the store, for operators.

use clap::Args;

use crate::{
    config::Settings,
    domain::AccountName,
    startup,
    store::{AuditRecord, AuditScope},
};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this account's events [default: every account's, and those of none].
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// At most this many events, 1 to 10000.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Only events older than this id (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: AuditArgs, settings: &Settings) -> anyhow::Result<()> {
    let scope = match &args.account {
        Some(name) => {
            AuditScope::AccountNamed(AccountName::parse(name).map_err(|e| anyhow::anyhow!("--account: {e}"))?)
        }
        None => AuditScope::All,
    };
    let store = startup::open_existing_store(settings).await?;
    let records = store.audit_events(&scope, args.before, args.limit).await?;
    for record in &records {
        println!("{}", if args.json { json_line(record) } else { text_line(record) });
    }
    if !args.json && records.len() == args.limit as usize {
        if let Some(last) = records.last() {
            eprintln!("(more: --before {})", last.id);
        }
    }
    Ok(())
}

fn json_line(r: &AuditRecord) -> String {
    serde_json::json!({
        "id": r.id,
        "at": r.event.at,
        "account_id": r.event.account_id.map(|a| a.to_string()),
        "action": r.event.action.as_str(),
        "actor": r.event.actor,
        "source": r.event.source,
        "target": r.event.target,
    })
    .to_string()
}

fn text_line(r: &AuditRecord) -> String {
    let e = &r.event;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        r.id,
        utc(e.at),
        e.action,
        e.actor,
        or_dash(&e.source),
        or_dash(&e.target),
        e.account_id.map_or_else(|| "-".to_owned(), |a| a.to_string()),
    )
}

/// RFC 3339 in UTC, from Unix seconds; the number itself if it is no representable date.
pub(super) fn utc(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
