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
    #[command(flatten)]
    pub store: super::StoreArgs,
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
    let line = serde_json::json!({
        "id": r.id,
        "at": r.event.at,
        "account_id": r.event.account_id.map(|a| a.to_string()),
        "action": r.event.action.as_str(),
        "actor": r.event.actor,
        "source": r.event.source,
        "target": r.event.target,
    })
    .to_string();
    // serde_json escapes C0 controls but writes DEL, C1 controls and bidi overrides as they
    // are; outside strings a JSON line is ASCII, so escaping them anywhere keeps it valid.
    line.chars().fold(String::with_capacity(line.len()), |mut out, c| {
        if is_hostile(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
        out
    })
}

fn text_line(r: &AuditRecord) -> String {
    let e = &r.event;
    let or_dash = |v: &Option<String>| v.as_deref().map_or_else(|| "-".into(), printable);
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        r.id,
        utc(e.at),
        printable(e.action.as_str()),
        printable(&e.actor),
        or_dash(&e.source),
        or_dash(&e.target),
        e.account_id.map_or_else(|| "-".to_owned(), |a| a.to_string()),
    )
}

/// Characters that must not reach a terminal as they are: controls (C0, DEL, C1; they move
/// the cursor, recolour or rewrite what is shown, and a tab or newline would forge a column
/// or a line) and the Unicode bidirectional controls, which reorder what follows them.
/// Actors and targets hold attempted emails and other text an attacker chooses.
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// `text` with every hostile character written as a Rust-style escape (`\n`, `\u{202e}`), and
/// backslashes doubled so that an escape in the output always means an escaped character.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_hostile(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
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
    use crate::store::{AuditAction, AuditEvent};

    #[test]
    fn hostile_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("admin@example.com"), "admin@example.com");
        assert_eq!(printable("jos\u{e9}@b\u{fc}ro.de"), "jos\u{e9}@b\u{fc}ro.de");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\u{202e}moc.live@y"), "x\\u{202e}moc.live@y");
        assert_eq!(printable("\t\n\r\u{7f}\u{9b}"), "\\t\\n\\r\\u{7f}\\u{9b}");
        assert_eq!(printable("a\\u{1b}"), "a\\\\u{1b}");
        for c in ['\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\0'] {
            assert_eq!(printable(&c.to_string()), c.escape_unicode().to_string());
        }
    }

    #[test]
    fn no_hostile_character_reaches_either_output() {
        let evil = "e\u{1b}]0;owned\u{7}\u{202e}\u{9b}31m\n1\t2@x.io".to_owned();
        let record = AuditRecord {
            id: 7,
            event: AuditEvent {
                at: 0,
                account_id: None,
                action: AuditAction::AdminLoginFailed,
                actor: evil.clone(),
                source: Some(evil.clone()),
                target: Some(evil.clone()),
            },
        };
        let text = text_line(&record);
        let json = json_line(&record);
        // Tabs separate the columns: the only ones left are those seven columns' own.
        assert_eq!(text.split('\t').count(), 7, "{text:?}");
        assert!(!text.chars().any(|c| is_hostile(c) && c != '\t'), "{text:?}");
        assert!(!json.chars().any(is_hostile), "{json:?}");
        // The JSON line still parses, to the very same text.
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["actor"], evil.as_str());
        assert_eq!(parsed["target"], evil.as_str());
    }

    #[test]
    fn formats_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
