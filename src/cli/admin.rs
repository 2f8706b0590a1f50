//! `keygate admin …`: create, list, change passwords, end sessions, unlock, delete. Safe
//! while the servers run: each command is one store transaction, seen by every server at
//! its next request.

use std::io::{IsTerminal, Read};

use clap::{Args, Subcommand};

use super::{InputError, StoreArgs};
use crate::{
    clock::Clock,
    config::Settings,
    domain::{AccountName, AdminPassword, ApiKeyId, Email},
    service::{admins::AdminDirectory, lockout::Subject},
    startup,
};

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add an admin to an account (creating the account if new).
    Create {
        /// The new admin's email, their login name; unique across all accounts.
        #[arg(long)]
        email: String,
        /// The account they administer, by name (e.g. acme), created if new: 1 to 64 of
        /// A-Z, a-z, 0-9, '.', '_' and '-'.
        #[arg(long, value_name = "NAME")]
        account: String,
        /// Read the password from standard input instead of asking twice on the terminal.
        /// (There is no option that takes the password itself: every user of the machine
        /// could read it.)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show the admins: email, account, when created.
    List {
        /// Only this account's admins [default: every account's].
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
    },
    /// Set a new password for an admin, and end every session of theirs.
    Passwd {
        /// The admin's email.
        #[arg(long)]
        email: String,
        /// Read the new password from standard input instead of asking twice on the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an admin and their sessions. Never the last admin of an account.
    Delete {
        /// The admin's email.
        #[arg(long)]
        email: String,
    },
    /// Manage admin sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// End a lockout at once: clear the failed-login counter of an admin email or an API key.
    Unlock(UnlockArgs),
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// End every session of an admin (e.g. after a stolen laptop).
    Revoke {
        /// The admin's email.
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct UnlockArgs {
    /// The admin email whose failed logins to forget.
    #[arg(long)]
    email: Option<String>,
    /// The API key (its id, e.g. 46SQZ49LT100U2QWQ3SI) whose failed logins to forget.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
}

pub async fn run(command: AdminCommand, settings: &Settings, clock: Clock) -> anyhow::Result<()> {
    // Every argument is checked before the store is opened, and the store before a
    // password is asked for.
    match command {
        AdminCommand::Create { email, account, password_stdin } => {
            let email = email_arg(&email)?;
            let account = account_arg(&account)?;
            let admins = directory(settings, clock).await?;
            let password = new_password(password_stdin)?;
            let account_id = admins.create(&email, &account, password).await?;
            println!("created admin {email} in account {} ({account_id})", account.as_str());
        }
        AdminCommand::List { account } => {
            let account = account.as_deref().map(account_arg).transpose()?;
            let admins = directory(settings, clock).await?;
            println!("EMAIL\tACCOUNT\tCREATED");
            for admin in admins.list(account.as_ref()).await? {
                println!("{}\t{}\t{}", admin.email, admin.account.as_str(), super::audit::utc(admin.created_at));
            }
        }
        AdminCommand::Passwd { email, password_stdin } => {
            let email = email_arg(&email)?;
            let admins = directory(settings, clock).await?;
            let password = new_password(password_stdin)?;
            let ended = admins.set_password(&email, password).await?;
            println!("changed the password of {email}; ended {ended} session(s)");
        }
        AdminCommand::Delete { email } => {
            let email = email_arg(&email)?;
            directory(settings, clock).await?.delete(&email).await?;
            println!("deleted admin {email} and their sessions");
        }
        AdminCommand::Sessions(SessionsCommand::Revoke { email }) => {
            let email = email_arg(&email)?;
            let ended = directory(settings, clock).await?.revoke_sessions(&email).await?;
            println!("ended {ended} session(s) of {email}");
        }
        AdminCommand::Unlock(UnlockArgs { email, api_key }) => {
            let subject = match (email, api_key) {
                (Some(email), _) => Subject::Email(email_arg(&email)?),
                (None, Some(key)) => {
                    Subject::ApiKey(ApiKeyId::parse(&key).map_err(|e| InputError(format!("--api-key: {e}")))?)
                }
                // clap's group requires exactly one.
                (None, None) => return Err(InputError("give --email or --api-key".into()).into()),
            };
            let key = subject.key();
            if !directory(settings, clock).await?.unlock(&subject).await? {
                println!("no failed logins recorded for {key}; nothing to clear");
            } else {
                println!("cleared the failed logins of {key}; it can log in again");
            }
        }
    }
    Ok(())
}

async fn directory(settings: &Settings, clock: Clock) -> anyhow::Result<AdminDirectory> {
    Ok(AdminDirectory::for_command(startup::open_existing_store(settings).await?, clock))
}

fn email_arg(raw: &str) -> Result<Email, InputError> {
    Email::parse(raw).map_err(|e| InputError(format!("--email: {e}")))
}

fn account_arg(raw: &str) -> Result<AccountName, InputError> {
    AccountName::parse(raw).map_err(|e| InputError(format!("--account: {e}")))
}

/// The new password: from standard input with `--password-stdin`, otherwise typed twice on
/// the terminal without echo.
fn new_password(from_stdin: bool) -> anyhow::Result<AdminPassword> {
    let password = |raw: &str| AdminPassword::parse(raw).map_err(|e| InputError(format!("the {e}")));
    if from_stdin {
        let mut raw = Vec::new();
        // Past the longest password allowed, so a longer one is refused rather than cut.
        std::io::stdin()
            .take(AdminPassword::MAX_BYTES as u64 + 3)
            .read_to_end(&mut raw)
            .map_err(|e| InputError(format!("cannot read the password from standard input: {e}")))?;
        let raw = match String::from_utf8(raw) {
            Ok(raw) => raw,
            // Cut inside a character, past the limit: refused below for its length.
            Err(e) if e.as_bytes().len() > AdminPassword::MAX_BYTES => {
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
            Err(_) => return Err(InputError("the password on standard input is not UTF-8 text".into()).into()),
        };
        return Ok(password(raw.trim_end_matches(['\r', '\n']))?);
    }
    if !std::io::stdin().is_terminal() {
        return Err(InputError(
            "standard input is not a terminal: pass --password-stdin to read the password from it".into(),
        )
        .into());
    }
    let first = rpassword::prompt_password("New password: ")?;
    // Checked before asking again, so a refused password need not be typed twice.
    let checked = password(&first)?;
    if rpassword::prompt_password("Repeat it: ")? != first {
        return Err(InputError("the two passwords differ; nothing was changed".into()).into());
    }
    Ok(checked)
}
