//! Names encrypted at rest (`SealedNames`) over the real SQLite and PostgreSQL stores: what the
//! table holds is sealed and bound to its row, what the repository hands out is the name;
//! rows from before sealing still read; keys rotate without a flag day.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use keel_credentials::envelope::Keyring;
use keel_domain::{NewUser, PageRequest, StoreError, User, UserEmail, UserName, UserRepo};
use keel_identity::sealed::SealedNames;
use keel_sql_postgres::PostgresStore;
use keel_sql_sqlite::{PoolSettings, SqliteStore};

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn user(name: &str, email: &str) -> User {
    let now = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap();
    User::create(
        NewUser {
            name: UserName::parse(name).unwrap(),
            email: UserEmail::parse(email).unwrap(),
        },
        now,
    )
}

fn sealed_over(raw: &Arc<dyn UserRepo>, keys: &[&str]) -> SealedNames {
    SealedNames::new(raw.clone(), Keyring::parse(keys.iter().copied()).unwrap())
}

async fn names_are_sealed_at_rest_and_open_on_the_way_out(raw: Arc<dyn UserRepo>) {
    let sealed = sealed_over(&raw, &[K1]);
    let long = "Ada Augusta King, Countess of Lovelace, née Byron, who wrote the first program!!";
    let ada = user(long, "ada@sealed.test");
    sealed.insert(&ada).await.unwrap();
    let stored = raw.get(ada.id).await.unwrap().unwrap();
    assert!(stored.name.is_sealed(), "the table holds {:?}", stored.name);
    assert!(!stored.name.as_str().contains("Lovelace"));
    assert_eq!(sealed.get(ada.id).await.unwrap().unwrap(), ada);
    let by_email = sealed.get_by_email(&ada.email).await.unwrap().unwrap();
    assert_eq!(by_email.name, ada.name);
    let page = sealed
        .list(PageRequest {
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert!(page.items.contains(&ada));

    // A row from before sealing reads as it is, and is sealed at its next write.
    let old = user("Grace Hopper", "grace@sealed.test");
    raw.insert(&old).await.unwrap();
    assert_eq!(sealed.get(old.id).await.unwrap().unwrap(), old);
    let renamed = User {
        name: UserName::parse("Grace B. Hopper").unwrap(),
        version: old.version + 1,
        ..old.clone()
    };
    assert!(sealed.update(&renamed).await.unwrap());
    assert!(raw.get(old.id).await.unwrap().unwrap().name.is_sealed());
    assert_eq!(
        sealed.get(old.id).await.unwrap().unwrap().name,
        renamed.name
    );

    // The write-back path seals too.
    let batch = user("Katherine Johnson", "katherine@sealed.test");
    sealed
        .apply_batch(std::slice::from_ref(&batch), &[])
        .await
        .unwrap();
    assert!(raw.get(batch.id).await.unwrap().unwrap().name.is_sealed());
    assert_eq!(sealed.get(batch.id).await.unwrap().unwrap(), batch);

    // A sealed name copied onto another row does not open there.
    let mallory = user("Mallory", "mallory@sealed.test");
    raw.insert(&mallory).await.unwrap();
    let moved = User {
        name: stored.name.clone(),
        version: mallory.version + 1,
        ..mallory.clone()
    };
    assert!(raw.update(&moved).await.unwrap());
    assert!(matches!(
        sealed.get(mallory.id).await,
        Err(StoreError::Internal(_))
    ));

    // Rotation: k2 first seals new writes; k1's values still open; without k1 they do not.
    let rotated = sealed_over(&raw, &[K2, K1]);
    assert_eq!(rotated.get(ada.id).await.unwrap().unwrap(), ada);
    let bo = user("Bo", "bo@sealed.test");
    rotated.insert(&bo).await.unwrap();
    let stored = raw.get(bo.id).await.unwrap().unwrap();
    assert!(stored.name.as_str().contains(".k2."), "{:?}", stored.name);
    let k2_only = sealed_over(&raw, &[K2]);
    assert_eq!(k2_only.get(bo.id).await.unwrap().unwrap(), bo);
    assert!(
        k2_only.get(ada.id).await.is_err(),
        "k1 was removed too early"
    );
}

#[tokio::test]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = SqliteStore::connect(&url, &pool).await.unwrap();
    store.migrate().await.unwrap();
    names_are_sealed_at_rest_and_open_on_the_way_out(Arc::new(store)).await;
}

#[tokio::test]
async fn on_postgres() {
    let url = keel_test_support::services::create_postgres_database().await;
    let pool = keel_sql_postgres::PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = PostgresStore::connect_lazy(&url, &pool).unwrap();
    store.migrate().await.unwrap();
    names_are_sealed_at_rest_and_open_on_the_way_out(Arc::new(store)).await;
}
