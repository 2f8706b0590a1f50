//! The console's static files, compiled in, each served under a name that holds a digest of
//! its content: a browser may keep a copy for good, and an upgraded server's page names new
//! files.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

pub struct Asset {
    /// `console.<digest>.js`.
    pub file: String,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Which asset a page refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Script,
    Style,
    Icon,
}

const SOURCES: [(Kind, &str, &str, &[u8]); 3] = [
    (Kind::Script, "console", "js", include_bytes!("console.js")),
    (Kind::Style, "console", "css", include_bytes!("console.css")),
    (Kind::Icon, "icon", "svg", include_bytes!("icon.svg")),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|&(_, stem, ext, body)| {
            let digest = Sha256::digest(body);
            let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
            let content_type = match ext {
                "js" => "text/javascript; charset=utf-8",
                "css" => "text/css; charset=utf-8",
                _ => "image/svg+xml",
            };
            Asset { file: format!("{stem}.{hex}.{ext}"), content_type, body }
        })
        .collect()
});

pub fn find(file: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.file == file)
}

/// The path a page links `kind` by.
pub fn path(kind: Kind) -> String {
    let index = SOURCES.iter().position(|(k, ..)| *k == kind);
    let file = index.and_then(|i| ASSETS.get(i)).map_or("", |a| a.file.as_str());
    format!("/console/assets/{file}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_by_the_path_pages_use() {
        for kind in [Kind::Script, Kind::Style, Kind::Icon] {
            let path = path(kind);
            let file = path.strip_prefix("/console/assets/").unwrap();
            let asset = find(file).unwrap_or_else(|| panic!("{path} is not served"));
            assert!(!asset.body.is_empty());
        }
        assert!(find("console.js").is_none(), "only digest names are served");
    }
}
