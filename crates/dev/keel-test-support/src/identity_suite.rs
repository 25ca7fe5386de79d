//! The behavioural suite of the `IdentityStore` port. Each backend invokes
//! [`identity_suite!`](crate::identity_suite), which runs every behaviour as its own test on a
//! fresh, migrated database whose store is also the `UserRepo` and the `EventStore`.

use chrono::{DurationRound, TimeDelta, Utc};
use keel_domain::{
    AuthEvent, AuthEventQuery, AuthorizationCode, Consent, Credentials, EventStore, Failures,
    FederatedLink, IdentityStore, NewAccount, NewUser, OidcClient, Outgoing, RefreshFamily,
    StoreError, User, UserEmail, UserId, UserName, UserRepo,
};
use serde_json::json;

fn user(email: &str) -> User {
    let now = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap();
    User::create(
        NewUser {
            name: UserName::parse("Ada").unwrap(),
            email: UserEmail::parse(email).unwrap(),
        },
        now,
    )
}

/// One test per behaviour of the suite on one adapter: `$open` is an async fn returning
/// `(guard, store)` on a fresh, empty database.
#[macro_export]
macro_rules! identity_suite {
    ($open:path) => {
        $crate::behaviours!($crate::identity_suite, $open;
            credentials_round_trip_with_optimistic_versions,
            roles_are_found_by_holder,
            deleting_a_user_erases_its_account,
            failures_are_counted_per_key_and_reset,
            refresh_families_advance_once_per_generation_and_revoke,
            signing_keys_are_written_once_per_version,
            the_audit_log_reads_newest_first_with_filters,
            clients_register_and_codes_are_taken_once,
            external_identities_link_once_and_go_with_the_account,
            consents_are_kept_per_person_and_client_and_withdrawn_with_their_sign_ins,
            an_account_is_made_whole_or_not_at_all,
        );
    };
}

pub async fn consents_are_kept_per_person_and_client_and_withdrawn_with_their_sign_ins<
    S: UserRepo + IdentityStore,
>(
    store: &S,
) {
    let ada = user("ada@consent.test");
    let bo = user("bo@consent.test");
    store.insert(&ada).await.unwrap();
    store.insert(&bo).await.unwrap();
    let consent = |user: UserId, client: &str, scope: &str, at: i64| Consent {
        user_id: user,
        client_id: client.into(),
        scope: scope.into(),
        granted_at: at,
    };
    assert_eq!(store.consent(ada.id, "app").await.unwrap(), None);
    store
        .put_consent(&consent(ada.id, "app", "openid", 1))
        .await
        .unwrap();
    // A second allowance to the same client replaces the first.
    let wider = consent(ada.id, "app", "openid email", 2);
    store.put_consent(&wider).await.unwrap();
    let other = consent(ada.id, "crm", "openid", 3);
    store.put_consent(&other).await.unwrap();
    store
        .put_consent(&consent(bo.id, "app", "openid", 4))
        .await
        .unwrap();
    assert_eq!(
        store.consent(ada.id, "app").await.unwrap(),
        Some(wider.clone())
    );
    assert_eq!(
        store.consents_of(ada.id).await.unwrap(),
        [wider, other.clone()]
    );

    // Withdrawing ends the client's sign-ins of that person, and no other.
    let family = |id: &str, subject: UserId, client: &str| RefreshFamily {
        id: id.into(),
        subject: subject.to_string(),
        client_id: client.into(),
        scope: "openid".into(),
        generation: 0,
        expires_at: i64::MAX,
        revoked: false,
        amr: vec!["pwd".into()],
        auth_time: 1,
    };
    for f in [
        family("consent-a", ada.id, "app"),
        family("consent-b", ada.id, "crm"),
        family("consent-c", bo.id, "app"),
    ] {
        store.insert_family(&f).await.unwrap();
    }
    assert!(store.withdraw_consent(ada.id, "app").await.unwrap());
    assert!(!store.withdraw_consent(ada.id, "app").await.unwrap());
    assert_eq!(store.consents_of(ada.id).await.unwrap(), [other]);
    let revoked =
        |id: &'static str| async move { store.family(id).await.unwrap().unwrap().revoked };
    assert!(revoked("consent-a").await);
    assert!(!revoked("consent-b").await);
    assert!(!revoked("consent-c").await);

    // Consents go with the account.
    store.delete(ada.id).await.unwrap();
    assert!(store.consents_of(ada.id).await.unwrap().is_empty());
    assert!(store.consent(bo.id, "app").await.unwrap().is_some());
}

/// `UserRepo::insert_account`: an account is stored whole — user, `user.created` event, credentials,
/// roles, audit entry, mail, external identity — and one refused for a taken address leaves
/// nothing behind.
pub async fn an_account_is_made_whole_or_not_at_all<S: UserRepo + IdentityStore + EventStore>(
    store: &S,
) {
    let account = |user: User| {
        let mut credentials = Credentials::new(user.id);
        credentials.password_hash = Some("$argon2id$stub".into());
        credentials.roles = vec!["operator".into()];
        NewAccount {
            audit: AuthEvent {
                id: 0,
                at: 1_800_000_000,
                actor: "system".into(),
                action: "account_created".into(),
                subject: Some(user.id.to_string()),
                client: None,
                detail: json!({ "roles": ["operator"] }),
            },
            mails: vec![(
                "mail.verify_email".into(),
                Outgoing::new(b"confirm".to_vec()).with_key(user.id.to_string()),
            )],
            link: Some(FederatedLink {
                provider: "corp".into(),
                subject: format!("sub-{}", user.id),
                user_id: user.id,
                linked_at: 1_800_000_000,
            }),
            credentials,
            user,
        }
    };
    let ada = account(user("ada@accounts.test"));
    store.insert_account(&ada).await.unwrap();
    assert_eq!(
        store.get(ada.user.id).await.unwrap(),
        Some(ada.user.clone())
    );
    assert_eq!(
        store.credentials(ada.user.id).await.unwrap(),
        Some(ada.credentials.clone())
    );
    assert_eq!(
        store.holders_of("operator", 10).await.unwrap(),
        vec![ada.user.id]
    );
    let subject = |id: UserId| AuthEventQuery {
        subject: Some(id.to_string()),
        limit: 10,
        ..AuthEventQuery::default()
    };
    let audit = store.audit(&subject(ada.user.id)).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "account_created");
    let outbox = store.outbox_pending(100).await.unwrap();
    let topics = |id: UserId| -> Vec<String> {
        outbox
            .iter()
            .filter(|r| r.message.key.as_deref() == Some(&id.to_string()))
            .map(|r| r.topic.clone())
            .collect()
    };
    assert_eq!(topics(ada.user.id), ["user.created", "mail.verify_email"]);
    assert_eq!(
        store
            .linked_account("corp", &format!("sub-{}", ada.user.id))
            .await
            .unwrap(),
        Some(ada.user.id)
    );

    // The same address again: refused, and none of its parts is stored.
    let twin = account(user("ada@accounts.test"));
    assert!(matches!(
        store.insert_account(&twin).await,
        Err(StoreError::Conflict { field: "email" })
    ));
    assert_eq!(store.get(twin.user.id).await.unwrap(), None);
    assert_eq!(store.credentials(twin.user.id).await.unwrap(), None);
    assert_eq!(
        store.holders_of("operator", 10).await.unwrap(),
        vec![ada.user.id]
    );
    assert!(
        store
            .audit(&subject(twin.user.id))
            .await
            .unwrap()
            .is_empty()
    );
    let outbox = store.outbox_pending(100).await.unwrap();
    assert!(
        outbox
            .iter()
            .all(|r| r.message.key.as_deref() != Some(&twin.user.id.to_string())),
        "no event or mail of the refused account"
    );
}

pub async fn external_identities_link_once_and_go_with_the_account<S: UserRepo + IdentityStore>(
    store: &S,
) {
    let ada = user("ada@federation.test");
    let bo = user("bo@federation.test");
    store.insert(&ada).await.unwrap();
    store.insert(&bo).await.unwrap();
    let link = |provider: &str, subject: &str, user: UserId| FederatedLink {
        provider: provider.into(),
        subject: subject.into(),
        user_id: user,
        linked_at: 1_800_000_000,
    };
    assert!(
        store
            .link_identity(&link("corp", "s-1", ada.id))
            .await
            .unwrap()
    );
    assert!(
        store
            .link_identity(&link("social", "s-1", ada.id))
            .await
            .unwrap()
    );
    assert!(
        !store
            .link_identity(&link("corp", "s-1", bo.id))
            .await
            .unwrap(),
        "one external identity signs in one account"
    );
    assert_eq!(
        store.linked_account("corp", "s-1").await.unwrap(),
        Some(ada.id)
    );
    assert_eq!(store.linked_account("corp", "s-2").await.unwrap(), None);
    assert_eq!(
        store.linked_account("CORP", "s-1").await.unwrap(),
        None,
        "exact match"
    );
    let links = store.links_of(ada.id).await.unwrap();
    assert_eq!(
        links
            .iter()
            .map(|l| l.provider.as_str())
            .collect::<Vec<_>>(),
        ["corp", "social"]
    );
    assert_eq!(links[0], link("corp", "s-1", ada.id));
    assert!(store.links_of(bo.id).await.unwrap().is_empty());
    assert!(store.delete(ada.id).await.unwrap());
    assert_eq!(store.linked_account("corp", "s-1").await.unwrap(), None);
    assert!(
        store
            .link_identity(&link("corp", "s-1", bo.id))
            .await
            .unwrap()
    );
}

pub async fn credentials_round_trip_with_optimistic_versions<S: UserRepo + IdentityStore>(
    store: &S,
) {
    let ada = user("ada@identity.test");
    store.insert(&ada).await.unwrap();
    assert_eq!(store.credentials(ada.id).await.unwrap(), None);

    let mut c = Credentials::new(ada.id);
    c.password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into());
    c.password_changed_at = Some(1_800_000_000);
    c.recovery_codes = vec!["h1".into(), "h2".into()];
    store.put_credentials(&c).await.unwrap();
    assert_eq!(store.credentials(ada.id).await.unwrap(), Some(c.clone()));
    assert!(
        matches!(
            store.put_credentials(&c).await,
            Err(StoreError::StaleVersion)
        ),
        "a second first version loses"
    );

    let mut next = c.clone();
    next.version = 2;
    next.totp_secret = Some("k1.k1.sealed.secret".into());
    next.totp_last_step = Some(60_000_000);
    next.recovery_codes.remove(0);
    next.email_verified_at = Some(1_800_000_100);
    next.last_login_at = Some(1_800_000_200);
    store.put_credentials(&next).await.unwrap();
    assert_eq!(store.credentials(ada.id).await.unwrap(), Some(next.clone()));
    let mut racing = c.clone();
    racing.version = 2;
    assert!(
        matches!(
            store.put_credentials(&racing).await,
            Err(StoreError::StaleVersion)
        ),
        "two writers of version 2: the second loses"
    );
    assert_eq!(store.credentials(ada.id).await.unwrap(), Some(next));
}

pub async fn roles_are_found_by_holder<S: UserRepo + IdentityStore>(store: &S) {
    let (one, two) = (user("one@identity.test"), user("two@identity.test"));
    store.insert(&one).await.unwrap();
    store.insert(&two).await.unwrap();
    assert!(store.holders_of("admin", 10).await.unwrap().is_empty());
    let mut first = Credentials::new(one.id);
    first.roles = vec!["admin".into(), "operator".into()];
    store.put_credentials(&first).await.unwrap();
    let mut second = Credentials::new(two.id);
    second.roles = vec!["operator".into()];
    store.put_credentials(&second).await.unwrap();
    assert_eq!(store.holders_of("admin", 10).await.unwrap(), [one.id]);
    let mut operators = vec![one.id, two.id];
    operators.sort();
    assert_eq!(store.holders_of("operator", 10).await.unwrap(), operators);
    assert_eq!(store.holders_of("operator", 1).await.unwrap().len(), 1);

    first.roles = vec!["operator".into()];
    first.version = 2;
    store.put_credentials(&first).await.unwrap();
    assert!(
        store.holders_of("admin", 10).await.unwrap().is_empty(),
        "a removed role is no longer held"
    );
}

pub async fn deleting_a_user_erases_its_account<S: UserRepo + IdentityStore>(store: &S) {
    let gone = user("gone@identity.test");
    store.insert(&gone).await.unwrap();
    let mut c = Credentials::new(gone.id);
    c.roles = vec!["auditor".into()];
    store.put_credentials(&c).await.unwrap();
    let family = RefreshFamily {
        id: "family-of-gone".into(),
        subject: gone.id.to_string(),
        client_id: "app".into(),
        scope: "openid email".into(),
        generation: 0,
        expires_at: 1_900_000_000,
        revoked: false,
        amr: vec!["pwd".into(), "otp".into()],
        auth_time: 1_800_000_000,
    };
    store.insert_family(&family).await.unwrap();
    assert!(store.delete(gone.id).await.unwrap());
    assert_eq!(store.credentials(gone.id).await.unwrap(), None);
    assert!(store.holders_of("auditor", 10).await.unwrap().is_empty());
    assert_eq!(store.family("family-of-gone").await.unwrap(), None);
}

pub async fn failures_are_counted_per_key_and_reset<S: IdentityStore>(store: &S) {
    assert_eq!(
        store.failures("account:x").await.unwrap(),
        Failures::default()
    );
    let one = Failures {
        count: 1,
        wait_until: 0,
    };
    store.put_failures("account:x", one).await.unwrap();
    let six = Failures {
        count: 6,
        wait_until: 1_800_000_030,
    };
    store.put_failures("client:127.0.0.1", six).await.unwrap();
    assert_eq!(store.failures("account:x").await.unwrap(), one);
    store.put_failures("account:x", six).await.unwrap();
    assert_eq!(store.failures("account:x").await.unwrap(), six);
    store
        .put_failures("account:x", Failures::default())
        .await
        .unwrap();
    assert_eq!(
        store.failures("account:x").await.unwrap(),
        Failures::default()
    );
    assert_eq!(store.failures("client:127.0.0.1").await.unwrap(), six);
}

pub async fn refresh_families_advance_once_per_generation_and_revoke<S: IdentityStore>(store: &S) {
    let family = RefreshFamily {
        id: "fam-1".into(),
        subject: "subject-1".into(),
        client_id: "app".into(),
        scope: "openid email".into(),
        generation: 0,
        expires_at: 1_900_000_000,
        revoked: false,
        amr: vec!["pwd".into(), "otp".into()],
        auth_time: 1_800_000_000,
    };
    store.insert_family(&family).await.unwrap();
    assert_eq!(store.family("fam-1").await.unwrap(), Some(family.clone()));
    assert_eq!(store.family("nope").await.unwrap(), None);

    let next = RefreshFamily {
        generation: 1,
        ..family.clone()
    };
    assert!(store.advance_family(&next, 0).await.unwrap());
    assert!(
        !store.advance_family(&next, 0).await.unwrap(),
        "two uses of one generation: the second loses"
    );
    assert_eq!(store.family("fam-1").await.unwrap(), Some(next.clone()));

    let other = RefreshFamily {
        id: "fam-2".into(),
        ..family.clone()
    };
    store.insert_family(&other).await.unwrap();
    store.revoke_family("fam-2").await.unwrap();
    assert!(store.family("fam-2").await.unwrap().unwrap().revoked);
    assert!(
        !store
            .advance_family(
                &RefreshFamily {
                    generation: 1,
                    ..other
                },
                0
            )
            .await
            .unwrap(),
        "a revoked family never advances"
    );
    let third = RefreshFamily {
        id: "fam-3".into(),
        ..family
    };
    store.insert_family(&third).await.unwrap();
    assert_eq!(store.revoke_families_of("subject-1").await.unwrap(), 2);
    assert!(store.family("fam-1").await.unwrap().unwrap().revoked);
    assert!(store.family("fam-3").await.unwrap().unwrap().revoked);
    assert_eq!(store.revoke_families_of("subject-1").await.unwrap(), 0);
}

pub async fn signing_keys_are_written_once_per_version<S: IdentityStore>(store: &S) {
    assert_eq!(store.signing_keys().await.unwrap(), None);
    assert!(store.put_signing_keys("sealed-1", 1).await.unwrap());
    assert!(
        !store.put_signing_keys("sealed-1b", 1).await.unwrap(),
        "a second process starting together reads the first one's keys"
    );
    assert_eq!(
        store.signing_keys().await.unwrap(),
        Some(("sealed-1".into(), 1))
    );
    assert!(store.put_signing_keys("sealed-2", 2).await.unwrap());
    assert!(!store.put_signing_keys("sealed-2b", 2).await.unwrap());
    assert!(!store.put_signing_keys("sealed-4", 4).await.unwrap());
    assert_eq!(
        store.signing_keys().await.unwrap(),
        Some(("sealed-2".into(), 2))
    );
}

pub async fn the_audit_log_reads_newest_first_with_filters<S: IdentityStore>(store: &S) {
    let event = |action: &str, subject: Option<&str>| AuthEvent {
        id: 0,
        at: 1_800_000_000,
        actor: "anonymous".into(),
        action: action.into(),
        subject: subject.map(str::to_owned),
        client: Some("127.0.0.1".into()),
        detail: json!({"reason": "test"}),
    };
    let first = store
        .append_audit(&event("login_failed", Some("u1")))
        .await
        .unwrap();
    let second = store
        .append_audit(&event("login_succeeded", Some("u1")))
        .await
        .unwrap();
    let third = store
        .append_audit(&event("login_failed", Some("u2")))
        .await
        .unwrap();
    assert!(first < second && second < third);

    let all = store
        .audit(&AuthEventQuery {
            limit: 10,
            ..AuthEventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        [third, second, first]
    );
    assert_eq!(
        all[2],
        AuthEvent {
            id: first,
            ..event("login_failed", Some("u1"))
        }
    );

    let of_u1 = store
        .audit(&AuthEventQuery {
            subject: Some("u1".into()),
            limit: 10,
            ..AuthEventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        of_u1.iter().map(|e| e.id).collect::<Vec<_>>(),
        [second, first]
    );
    let failed_before = store
        .audit(&AuthEventQuery {
            action: Some("login_failed".into()),
            before: Some(third),
            limit: 10,
            ..AuthEventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        failed_before.iter().map(|e| e.id).collect::<Vec<_>>(),
        [first]
    );
    let page = store
        .audit(&AuthEventQuery {
            actor: Some("anonymous".into()),
            limit: 1,
            ..AuthEventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
}

pub async fn clients_register_and_codes_are_taken_once<S: IdentityStore>(store: &S) {
    assert_eq!(store.client("app").await.unwrap(), None);
    let mut app = OidcClient {
        id: "app".into(),
        name: "An app".into(),
        secret_hash: Some("ab12".into()),
        redirect_uris: vec!["http://127.0.0.1:9000/cb".into()],
        created_at: 1_800_000_000,
    };
    store.put_client(&app).await.unwrap();
    let spa = OidcClient {
        id: "spa".into(),
        name: "A single-page app".into(),
        secret_hash: None,
        redirect_uris: vec![
            "http://127.0.0.1:9001/cb".into(),
            "http://127.0.0.1:9001/other".into(),
        ],
        created_at: 1_800_000_001,
    };
    store.put_client(&spa).await.unwrap();
    assert_eq!(store.client("spa").await.unwrap(), Some(spa.clone()));
    app.redirect_uris.push("http://127.0.0.1:9000/cb2".into());
    store.put_client(&app).await.unwrap();
    assert_eq!(store.clients().await.unwrap(), [app, spa]);

    let code = AuthorizationCode {
        code_hash: "hash-1".into(),
        client_id: "app".into(),
        user_id: UserId::generate(),
        redirect_uri: "http://127.0.0.1:9000/cb".into(),
        scope: "openid email".into(),
        nonce: Some("n-0S6_WzA2Mj".into()),
        challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        auth_time: 1_800_000_000,
        amr: vec!["pwd".into(), "otp".into(), "mfa".into()],
        expires_at: 1_800_000_060,
    };
    store.insert_code(&code).await.unwrap();
    assert_eq!(store.take_code("hash-1").await.unwrap(), Some(code));
    assert_eq!(
        store.take_code("hash-1").await.unwrap(),
        None,
        "a code works once"
    );
    assert_eq!(store.take_code("never").await.unwrap(), None);
}
