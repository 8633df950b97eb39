//! Fingerprints the dashboard's assets: each gets an entity tag, and the
//! page names its script and style sheet with their fingerprint, so a
//! browser may keep them for a year and still never runs a stale script
//! after an upgrade.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

const ASSETS: &[(&str, &str)] = &[
    ("APP_JS", "assets/app.js"),
    ("APP_CSS", "assets/app.css"),
    ("ICON", "assets/icon.svg"),
];

fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..12].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut generated = String::new();
    let mut page = std::fs::read_to_string("assets/index.html").expect("assets/index.html");
    println!("cargo:rerun-if-changed=assets/index.html");
    for (name, path) in ASSETS {
        println!("cargo:rerun-if-changed={path}");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let print = fingerprint(&bytes);
        writeln!(generated, "/// The fingerprint of `{path}`.").unwrap();
        writeln!(generated, "pub const {name}_VERSION: &str = {print:?};").unwrap();
        page = page.replace(&format!("@{name}_VERSION@"), &print);
    }
    assert!(
        !page.contains("_VERSION@"),
        "index.html names an asset build.rs does not know"
    );
    let page_print = fingerprint(page.as_bytes());
    writeln!(generated, "/// The fingerprint of the page.").unwrap();
    writeln!(generated, "pub const PAGE_VERSION: &str = {page_print:?};").unwrap();
    std::fs::write(Path::new(&out).join("index.html"), page).unwrap();
    std::fs::write(Path::new(&out).join("generated.rs"), generated).unwrap();
}
