//! `ckan_vault::ckan::api` against a real CKAN 2.11.6 on loopback (tests/common/ckan.rs):
//! create user → token → whoami → list → revoke → whoami fails, and CKAN's error shapes.

#[path = "common/ckan.rs"]
mod ckan;

use std::time::Duration;

use ckan_vault::ckan::api::{Client, Error, jwt_id};
use secrecy::{ExposeSecret, SecretString};

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

/// CKAN never purges users: every test uses fresh names.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn admin() -> Client {
    let c = ckan::ckan();
    Client::new(
        &c.url,
        Some(secret(&c.admin_token())),
        Duration::from_secs(60),
    )
    .unwrap()
}

#[test]
fn status_show_anonymously() {
    let c = ckan::ckan();
    let anon = Client::new(&c.url, None, Duration::from_secs(60)).unwrap();
    let s = anon.status_show().unwrap();
    assert_eq!(s.ckan_version, "2.11.6");
    assert_eq!(s.site_url, c.url);
}

#[test]
fn token_lifecycle() {
    let c = ckan::ckan();
    let admin = admin();
    assert_eq!(admin.whoami().unwrap(), "admin");

    let name = unique("alice");
    let user = admin
        .user_create(
            &name,
            &format!("{name}@example.org"),
            &secret("a long password 1"),
        )
        .unwrap();
    assert_eq!(user.name, name);
    assert_eq!(user.state, "active");
    assert!(!user.sysadmin);

    // A sysadmin creates a token for the new user; CKAN 2.11 returns only the JWT, so
    // the id comes from its jti claim.
    let new = admin.api_token_create(&name, "dcor-aid").unwrap();
    assert_eq!(jwt_id(&new.token).unwrap(), new.id);

    let as_user = Client::new(&c.url, Some(new.token), Duration::from_secs(60)).unwrap();
    assert_eq!(as_user.whoami().unwrap(), name);
    let me = as_user.user_show(None).unwrap();
    assert_eq!(me.id, user.id);
    assert_eq!(
        me.email.as_deref(),
        Some(format!("{name}@example.org").as_str())
    );

    // Both the user and the sysadmin see the token by id; no secret in the list.
    for client in [&as_user, &admin] {
        let list = client.api_token_list(&name).unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].id, new.id);
        assert_eq!(list[0].name, "dcor-aid");
        assert_eq!(list[0].user_id, user.id);
    }

    admin.api_token_revoke_jti(&new.id).unwrap();
    let err = as_user.whoami().unwrap_err();
    assert!(matches!(err, Error::InvalidToken), "{err}");
    assert!(admin.api_token_list(&name).unwrap().is_empty());
    // The revoked token can no longer list its own tokens either.
    let err = as_user.api_token_list(&name).unwrap_err();
    assert!(matches!(err, Error::Authorization { .. }), "{err}");
}

#[test]
fn ckan_error_shapes() {
    let c = ckan::ckan();
    let admin = admin();
    let name = unique("bob");
    let email = format!("{name}@example.org");
    admin
        .user_create(&name, &email, &secret("a long password 2"))
        .unwrap();

    // 409: name taken, field-keyed.
    let err = admin
        .user_create(
            &name,
            &format!("other-{email}"),
            &secret("a long password 3"),
        )
        .unwrap_err();
    match &err {
        Error::Validation { fields, .. } => {
            assert!(fields.iter().any(|(f, _)| f == "name"), "{fields:?}")
        }
        other => panic!("{other}"),
    }
    // 409: password too short, and a bad name.
    let err = admin
        .user_create(&unique("carol"), &format!("c-{email}"), &secret("short"))
        .unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    let err = admin
        .user_create(
            "Not A Valid Name",
            &format!("d-{email}"),
            &secret("a long password 4"),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err}");

    // 404: token for a user that does not exist.
    let err = admin.api_token_create(&unique("nobody"), "x").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // 403: a normal user may not create users.
    let bob_token = admin.api_token_create(&name, "t").unwrap();
    let bob = Client::new(&c.url, Some(bob_token.token), Duration::from_secs(60)).unwrap();
    let err = bob
        .user_create(
            &unique("eve"),
            &format!("e-{email}"),
            &secret("a long password 5"),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Authorization { .. }), "{err}");

    // A garbage token is treated as anonymous: whoami says so, no 401 anywhere.
    let garbage = "eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJub3BlIn0.AAAA";
    let anon = Client::new(&c.url, Some(secret(garbage)), Duration::from_secs(60)).unwrap();
    let err = anon.whoami().unwrap_err();
    assert!(matches!(err, Error::InvalidToken), "{err}");
    let err = anon.api_token_list("admin").unwrap_err();
    assert!(!err.to_string().contains(garbage), "{err}");

    // No message ever contains the admin token.
    let token = c.admin_token();
    for e in [
        admin.api_token_create(&unique("nobody"), "x").unwrap_err(),
        admin
            .user_create(&name, &email, &secret("a long password 6"))
            .unwrap_err(),
    ] {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(token.as_str()), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }
    let _ = secret(&token).expose_secret().len();
}
