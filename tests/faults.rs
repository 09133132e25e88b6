//! probe
mod common;

use common::site::Site;
use std::time::Instant;

#[test]
fn probe() {
    let t = Instant::now();
    let site = Site::new(3000);
    eprintln!("site in {:?}", t.elapsed());
    let t = Instant::now();
    let b = site.json(&["backup"]);
    eprintln!("backup in {:?}: {b}", t.elapsed());
    let t = Instant::now();
    let b = site.json(&["backup"]);
    eprintln!("backup2 in {:?}: {b}", t.elapsed());
    let out = std::process::Command::new("du")
        .arg("-sh")
        .arg(&site.vault)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let out = std::process::Command::new("ls")
        .arg("-laR")
        .arg(&site.vault)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}
