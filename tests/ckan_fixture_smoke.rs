//! Smoke test of the CKAN fixture (tests/common/ckan.rs): the instance answers, the admin
//! token authenticates, and every test in the process gets the same instance.

#[path = "common/ckan.rs"]
mod ckan;

#[test]
fn status_show_answers() {
    let c = ckan::ckan();
    let r = c.get("status_show", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.success(), "{r:?}");
    assert!(r.body.contains("\"ckan_version\": \"2.11.6\""), "{r:?}");
    assert!(
        r.body.contains(&c.url),
        "site_url should be {}: {r:?}",
        c.url
    );
}

#[test]
fn admin_token_authenticates() {
    let c = ckan::ckan();
    let token = c.admin_token();
    // An auth-needing action: with the token it succeeds, anonymously it is refused.
    let ok = c.get("api_token_list?user_id=admin", Some(&token));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.success() && ok.body.contains("ci-admin"), "{ok:?}");
    let anon = c.get("api_token_list?user_id=admin", None);
    assert_eq!(anon.status, 403, "{anon:?}");
    // user_show without id is "whoami".
    let me = c.get("user_show", Some(&token));
    assert!(
        me.success() && me.body.contains("\"name\": \"admin\""),
        "{me:?}"
    );
    assert!(me.body.contains("\"sysadmin\": true"), "{me:?}");
}

#[test]
fn same_instance_and_files() {
    let a = ckan::ckan();
    let b = ckan::ckan();
    assert!(std::ptr::eq(a, b));
    assert!(a.ini.is_file());
    assert!(a.storage.join("resources/abc/def/example.csv").is_file());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&a.admin_token_file)
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "token file must not be group/world readable"
    );
}

#[test]
fn databases_reachable() {
    let c = ckan::ckan();
    // Superuser over the unix socket: the DataStore table seeded by ckan-up.sh.
    let out = c
        .psql_superuser("datastore_default")
        .args([
            "-tA",
            "-c",
            "SELECT count(*) FROM \"0f6a2c1e-9b1d-4a53-8d0c-5ad3c0e7a001\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    // ckan_default over TCP with its password (from the environment, not argv).
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-tA",
            "-h",
            "127.0.0.1",
            "-U",
            "ckan_default",
            "-d",
            "ckan_default",
        ])
        .arg("-p")
        .arg(c.pg_port.to_string())
        .args([
            "-c",
            "SELECT name FROM \"user\" WHERE sysadmin AND state = 'active' ORDER BY name",
        ])
        .env("PGPASSWORD", c.pg_password())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "admin"),
        "{out:?}"
    );
}
