//! The console's one page, in its two views. The markup holds every form, table and dialog;
//! the script (`console.js`) fills the tables from the API and drives the dialogs. Nothing
//! here is inline script or style: the policy allows neither.

use maud::{DOCTYPE, Markup, html};

use super::assets::{Kind, path};

/// Which part of the console a page shows.
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    /// The keys, filtered by `name` when it is not empty.
    Keys {
        name: &'a str,
    },
    Audit,
}

/// Why a page opens on the sign-in form with a message.
#[derive(Debug, Clone, Copy)]
pub enum Notice {
    /// The browser sent a session cookie whose session is over.
    Ended,
    /// The session could not be checked (the store does not answer).
    Unavailable,
}

pub struct Page<'a> {
    pub view: View<'a>,
    pub signed_in: bool,
    pub notice: Option<Notice>,
}

pub fn render(page: &Page) -> Markup {
    let (view, title) = match page.view {
        View::Keys { .. } => ("keys", "API keys"),
        View::Audit => ("audit", "Audit log"),
    };
    let notice = page.notice.map(|n| match n {
        Notice::Ended => "Your session has ended. Sign in again.",
        Notice::Unavailable => "keygate cannot check your session right now. Reload the page in a moment.",
    });
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                meta name="referrer" content="no-referrer";
                title { (title) " · keygate" }
                link rel="icon" type="image/svg+xml" href=(path(Kind::Icon));
                link rel="stylesheet" href=(path(Kind::Style));
                script src=(path(Kind::Script)) defer {}
            }
            body data-view=(view) data-signed-in=(page.signed_in) {
                a.skip href="#main" { "Skip to content" }
                header.bar {
                    a.brand href="/console" {
                        img src=(path(Kind::Icon)) alt="" width="24" height="24";
                        span { "keygate" }
                    }
                    nav #app-nav aria-label="Console" hidden[!page.signed_in] {
                        a href="/console" aria-current=[matches!(page.view, View::Keys { .. }).then_some("page")] { "Keys" }
                        a href="/console/audit" aria-current=[matches!(page.view, View::Audit).then_some("page")] { "Audit log" }
                    }
                    button #sign-out type="button" hidden[!page.signed_in] { "Sign out" }
                }
                main #main tabindex="-1" {
                    p #notice .notice role="status" hidden[notice.is_none()] { @if let Some(text) = notice { (text) } }
                    noscript { p.error { "The console needs JavaScript: it works through keygate's API from this page." } }
                    (sign_in(page.signed_in))
                    @match page.view {
                        View::Keys { name } => (keys(page.signed_in, name)),
                        View::Audit => (audit(page.signed_in)),
                    }
                }
                (generate_dialog())
                (secret_dialog())
                (roll_dialog())
                (edit_dialog())
                (delete_dialog())
            }
        }
    }
}

fn sign_in(signed_in: bool) -> Markup {
    html! {
        section #sign-in .card .narrow aria-labelledby="sign-in-title" hidden[signed_in] {
            h1 #sign-in-title { "Sign in" }
            p.muted { "Sign in with your keygate admin email and password." }
            // POST, so that not even a submission without the script puts the password in a URL;
            // the button is enabled by the script, which sends the form to the API instead.
            form #sign-in-form method="post" action="/auth/login" {
                div.field {
                    label for="sign-in-email" { "Email" }
                    input #sign-in-email type="email" name="email" autocomplete="username" required spellcheck="false";
                }
                div.field {
                    label for="sign-in-password" { "Password" }
                    input #sign-in-password type="password" name="password" autocomplete="current-password" required;
                }
                p #sign-in-error .error role="alert" hidden {}
                div.actions {
                    button.primary type="submit" disabled { "Sign in" }
                }
            }
        }
    }
}

fn keys(signed_in: bool, name: &str) -> Markup {
    html! {
        section #keys aria-labelledby="keys-title" hidden[!signed_in] {
            div.section-head {
                h1 #keys-title { "API keys" }
                button #generate-open .primary type="button" { "Generate key" }
            }
            form #search .search role="search" method="get" action="/console" {
                label for="search-name" { "Search by exact name" }
                div.inline {
                    input #search-name type="search" name="name" value=(name) maxlength="100" autocomplete="off";
                    button type="submit" { "Search" }
                }
            }
            p #keys-error .error role="alert" hidden {}
            div.table-wrap {
                table #keys-table .data aria-labelledby="keys-title" {
                    thead {
                        tr {
                            th scope="col" { "Name" }
                            th scope="col" { "Key" }
                            th scope="col" { "Scopes" }
                            th scope="col" { "Created" }
                            th scope="col" { "Last used" }
                            th scope="col" { "Expires" }
                            th scope="col" { "Status" }
                            th scope="col" { "Usage" }
                            th scope="col" { span.visually-hidden { "Actions" } }
                        }
                    }
                    tbody #keys-body {}
                }
            }
            p #keys-empty .empty hidden {}
            nav #keys-pages .pages aria-label="Pages of keys" {
                a #keys-first href="/console" hidden { "First page" }
                a #keys-next href="/console" hidden { "Next page" }
            }
        }
    }
}

fn audit(signed_in: bool) -> Markup {
    html! {
        section #audit aria-labelledby="audit-title" hidden[!signed_in] {
            div.section-head {
                h1 #audit-title { "Audit log" }
            }
            p.muted { "What was done in this account, newest first." }
            p #audit-error .error role="alert" hidden {}
            div.table-wrap {
                table #audit-table .data aria-labelledby="audit-title" {
                    thead {
                        tr {
                            th scope="col" { "When" }
                            th scope="col" { "Event" }
                            th scope="col" { "By" }
                            th scope="col" { "Target" }
                            th scope="col" { "From" }
                        }
                    }
                    tbody #audit-body {}
                }
            }
            p #audit-empty .empty hidden { "Nothing has been recorded yet." }
            nav #audit-pages .pages aria-label="Pages of the audit log" {
                a #audit-newest href="/console/audit" hidden { "Newest" }
                a #audit-older href="/console/audit" hidden { "Older events" }
            }
        }
    }
}

/// Expiry choices for a new key, in seconds (`expires_in`); empty: never.
const EXPIRY: [(&str, &str); 6] = [
    ("", "Never"),
    ("86400", "In 1 day"),
    ("604800", "In 7 days"),
    ("2592000", "In 30 days"),
    ("7776000", "In 90 days"),
    ("31536000", "In 1 year"),
];

fn generate_dialog() -> Markup {
    html! {
        dialog #generate-dialog aria-labelledby="generate-title" {
            form #generate-form method="dialog" {
                h2 #generate-title { "Generate a key" }
                div.field {
                    label for="generate-name" { "Name" }
                    input #generate-name type="text" name="name" maxlength="100" autocomplete="off" aria-describedby="generate-name-hint";
                    p #generate-name-hint .hint { "Optional. Who or what uses the key, e.g. billing-service." }
                }
                div.field {
                    label for="generate-scopes" { "Scopes" }
                    input #generate-scopes type="text" name="scopes" autocomplete="off" spellcheck="false" aria-describedby="generate-scopes-hint";
                    p #generate-scopes-hint .hint { "Optional. Separated by spaces, e.g. orders:read orders:write. Tokens of the key carry them." }
                }
                div.field {
                    label for="generate-expiry" { "Expires" }
                    select #generate-expiry name="expiry" {
                        @for (value, label) in EXPIRY { option value=(value) { (label) } }
                    }
                }
                p #generate-error .error role="alert" hidden {}
                div.actions {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Generate" }
                }
            }
        }
    }
}

fn secret_dialog() -> Markup {
    html! {
        dialog #secret-dialog aria-labelledby="secret-title" aria-describedby="secret-warning" {
            h2 #secret-title { "Key generated" }
            p #secret-for .muted {}
            dl.secret {
                dt { "API key" }
                dd { code #secret-key {} }
                dt { "Password" }
                dd { code #secret-password {} }
            }
            p #secret-warning .warning {
                strong { "This is the only time keygate shows this password." }
                " Copy it now into your secret store: keygate keeps only a hash of it and cannot show it again. If it is lost, roll the key for a new one."
            }
            p #secret-note .muted hidden {}
            div.actions {
                span #copy-status .muted role="status" {}
                button #secret-copy type="button" autofocus { "Copy password" }
                button.primary type="button" data-close { "Done" }
            }
        }
    }
}

/// Grace periods for a roll, in seconds; the API's default (a day) is preselected.
const GRACE: [(&str, &str); 4] =
    [("0", "None: the old password stops now"), ("3600", "1 hour"), ("86400", "1 day"), ("604800", "7 days")];

fn roll_dialog() -> Markup {
    html! {
        dialog #roll-dialog aria-labelledby="roll-title" {
            form #roll-form method="dialog" {
                h2 #roll-title { "Roll key" }
                p #roll-text {}
                div.field {
                    label for="roll-grace" { "The old password keeps working for" }
                    select #roll-grace name="grace" {
                        @for (value, label) in GRACE { option value=(value) selected[value == "86400"] { (label) } }
                    }
                }
                p #roll-error .error role="alert" hidden {}
                div.actions {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Roll" }
                }
            }
        }
    }
}

fn edit_dialog() -> Markup {
    html! {
        dialog #edit-dialog aria-labelledby="edit-title" {
            form #edit-form method="dialog" {
                h2 #edit-title { "Edit key" }
                p #edit-text .muted {}
                div.field {
                    label for="edit-name" { "Name" }
                    input #edit-name type="text" name="name" maxlength="100" autocomplete="off";
                }
                div.field {
                    label for="edit-scopes" { "Scopes" }
                    input #edit-scopes type="text" name="scopes" autocomplete="off" spellcheck="false" aria-describedby="edit-scopes-hint";
                    p #edit-scopes-hint .hint { "Separated by spaces. New tokens carry the new scopes." }
                }
                div.field {
                    label for="edit-expires" { "Expires" }
                    input #edit-expires type="datetime-local" name="expires" step="60" aria-describedby="edit-expires-hint";
                    p #edit-expires-hint .hint { "In your local time. Empty: never." }
                }
                p #edit-error .error role="alert" hidden {}
                div.actions {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Save" }
                }
            }
        }
    }
}

fn delete_dialog() -> Markup {
    html! {
        dialog #delete-dialog aria-labelledby="delete-title" aria-describedby="delete-text" {
            form #delete-form method="dialog" {
                h2 #delete-title { "Delete key?" }
                p #delete-text {}
                p.warning { "It stops logging in at once and its tokens are refused. This cannot be undone." }
                p #delete-error .error role="alert" hidden {}
                div.actions {
                    button type="button" data-close autofocus { "Cancel" }
                    button #delete-confirm .danger type="submit" { "Delete" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(view: View, signed_in: bool, notice: Option<Notice>) -> String {
        render(&Page { view, signed_in, notice }).into_string()
    }

    /// The policy allows no inline script or style: the page must have none to break.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        for view in [View::Keys { name: "" }, View::Audit] {
            for signed_in in [false, true] {
                let html = page(view, signed_in, Some(Notice::Ended));
                assert!(!html.contains(" style="), "style attribute");
                assert!(!html.contains("<style"), "style element");
                assert!(!html.contains("javascript:"), "script URL");
                let handler = html.match_indices(" on").any(|(at, _)| {
                    let name: String = html[at + 3..].chars().take_while(|c| c.is_ascii_lowercase()).collect();
                    !name.is_empty() && html[at + 3 + name.len()..].starts_with('=')
                });
                assert!(!handler, "event handler attribute");
                for script in html.split("<script").skip(1) {
                    let (tag, rest) = script.split_once('>').unwrap();
                    assert!(tag.contains(" src=\"/console/assets/"), "inline script: {tag}");
                    assert!(rest.starts_with("</script>"), "script with content");
                }
            }
        }
    }

    #[test]
    fn the_search_is_shown_escaped() {
        let html = page(View::Keys { name: "\"><script>x</script>" }, true, None);
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""), "{html}");
    }
}
