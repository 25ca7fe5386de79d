//! The behavioural suite of the `UserRepo` port. Each backend invokes [`repo_suite!`](crate::repo_suite),
//! which runs every behaviour as its own test on a fresh, empty, migrated database.

use chrono::{DurationRound, TimeDelta, Utc};
use keel_domain::{
    NewUser, PageRequest, StoreError, User, UserEmail, UserName, UserPatch, UserRepo,
};

fn new_user(name: &str, email: &str) -> User {
    // Microsecond precision is what every backend stores (MariaDB DATETIME(6)).
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

/// One test per behaviour of the suite on one adapter: `$open` is an async fn returning
/// `(guard, store)` on a fresh, empty database.
#[macro_export]
macro_rules! repo_suite {
    ($open:path) => {
        $crate::behaviours!($crate::repo_suite, $open;
            inserted_user_reads_back_identically,
            missing_user_reads_as_none,
            duplicate_email_is_a_conflict_on_email,
            update_replaces_fields_and_refuses_stale_versions,
            update_and_delete_of_missing_user_report_false,
            delete_removes_the_user,
            listing_pages_through_every_user_in_creation_order,
            apply_batch_is_idempotent_and_respects_versions,
            ping_succeeds,
        );
    };
}

pub async fn inserted_user_reads_back_identically(repo: &dyn UserRepo) {
    let user = new_user("Ada Lovelace", "ada@example.com");
    repo.insert(&user).await.unwrap();
    let read = repo
        .get(user.id)
        .await
        .unwrap()
        .expect("inserted user must be found");
    assert_eq!(read, user, "a user must read back exactly as written");
    let by_email = repo
        .get_by_email(&user.email)
        .await
        .unwrap()
        .expect("found by email");
    assert_eq!(by_email, user);
    let nobody = UserEmail::parse("nobody@example.com").unwrap();
    assert!(repo.get_by_email(&nobody).await.unwrap().is_none());
}

pub async fn missing_user_reads_as_none(repo: &dyn UserRepo) {
    let ghost = new_user("Ghost", "ghost@example.com");
    assert!(repo.get(ghost.id).await.unwrap().is_none());
}

pub async fn duplicate_email_is_a_conflict_on_email(repo: &dyn UserRepo) {
    let first = new_user("First", "dup@example.com");
    repo.insert(&first).await.unwrap();
    let second = new_user("Second", "dup@example.com");
    match repo.insert(&second).await {
        Err(StoreError::Conflict { field }) => assert_eq!(field, "email"),
        other => panic!("duplicate email must be a conflict, got {other:?}"),
    }
    assert!(
        repo.get(second.id).await.unwrap().is_none(),
        "a refused insert must write nothing"
    );
}

pub async fn update_replaces_fields_and_refuses_stale_versions(repo: &dyn UserRepo) {
    let user = new_user("Before", "update@example.com");
    repo.insert(&user).await.unwrap();
    let patch = UserPatch {
        name: Some(UserName::parse("After").unwrap()),
        email: None,
    };
    let next = user.patched(&patch, user.updated_at + TimeDelta::seconds(1));
    assert!(repo.update(&next).await.unwrap());
    assert_eq!(repo.get(user.id).await.unwrap().unwrap(), next);

    // Writing version 2 again (a replay) or an older version must be refused, leaving the row alone.
    match repo.update(&next).await {
        Err(StoreError::StaleVersion) => {}
        other => panic!("re-applying a version must be stale, got {other:?}"),
    }
    match repo.update(&user).await {
        Err(StoreError::StaleVersion) => {}
        other => panic!("an older version must be stale, got {other:?}"),
    }
    assert_eq!(repo.get(user.id).await.unwrap().unwrap(), next);

    // Taking another user's email is a conflict.
    let other = new_user("Other", "other-update@example.com");
    repo.insert(&other).await.unwrap();
    let steal = UserPatch {
        name: None,
        email: Some(UserEmail::parse("update@example.com").unwrap()),
    };
    match repo.update(&other.patched(&steal, other.updated_at)).await {
        Err(StoreError::Conflict { field }) => assert_eq!(field, "email"),
        res => panic!("taking a used email must conflict, got {res:?}"),
    }
}

pub async fn update_and_delete_of_missing_user_report_false(repo: &dyn UserRepo) {
    let ghost = new_user("Ghost", "ghost2@example.com");
    assert!(
        !repo
            .update(&ghost.patched(&UserPatch::default(), ghost.updated_at))
            .await
            .unwrap()
    );
    assert!(!repo.delete(ghost.id).await.unwrap());
}

pub async fn delete_removes_the_user(repo: &dyn UserRepo) {
    let user = new_user("Doomed", "doomed@example.com");
    repo.insert(&user).await.unwrap();
    assert!(repo.delete(user.id).await.unwrap());
    assert!(repo.get(user.id).await.unwrap().is_none());
    // The email is free again.
    repo.insert(&new_user("Reborn", "doomed@example.com"))
        .await
        .unwrap();
}

pub async fn listing_pages_through_every_user_in_creation_order(repo: &dyn UserRepo) {
    for n in 0..7 {
        repo.insert(&new_user(
            &format!("Lister {n}"),
            &format!("lister{n}@example.com"),
        ))
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = repo.list(PageRequest { after, limit: 3 }).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|u| u.id));
        match page.next_after {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages must come in id order");
    sorted.dedup();
    assert_eq!(seen.len(), sorted.len(), "no user may appear twice");
    let all = repo
        .list(PageRequest {
            after: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(all.items.len(), seen.len(), "paging must reach every user");
    assert!(all.next_after.is_none());
}

pub async fn apply_batch_is_idempotent_and_respects_versions(repo: &dyn UserRepo) {
    let fresh = new_user("Batched", "batched@example.com");
    let existing = new_user("Existing", "existing-batch@example.com");
    let doomed = new_user("BatchDoomed", "batch-doomed@example.com");
    repo.insert(&existing).await.unwrap();
    repo.insert(&doomed).await.unwrap();
    let patch = UserPatch {
        name: Some(UserName::parse("Existing v2").unwrap()),
        email: None,
    };
    let existing_v2 = existing.patched(&patch, existing.updated_at);

    for _ in 0..2 {
        // Applying the same batch twice (a journal replay) must land the same state once.
        repo.apply_batch(&[fresh.clone(), existing_v2.clone()], &[doomed.id])
            .await
            .unwrap();
        assert_eq!(repo.get(fresh.id).await.unwrap().unwrap(), fresh);
        assert_eq!(repo.get(existing.id).await.unwrap().unwrap(), existing_v2);
        assert!(repo.get(doomed.id).await.unwrap().is_none());
    }
    // An older version in a batch never overwrites a newer row.
    repo.apply_batch(std::slice::from_ref(&existing), &[])
        .await
        .unwrap();
    assert_eq!(repo.get(existing.id).await.unwrap().unwrap(), existing_v2);

    // A conflicting batch is refused whole.
    let clash = new_user("Clash", "batched@example.com");
    let innocent = new_user("Innocent", "innocent-batch@example.com");
    match repo
        .apply_batch(&[innocent.clone(), clash.clone()], &[])
        .await
    {
        Err(StoreError::Conflict { field }) => assert_eq!(field, "email"),
        other => panic!("a batch with a duplicate email must conflict, got {other:?}"),
    }
    assert!(
        repo.get(innocent.id).await.unwrap().is_none(),
        "a refused batch must write nothing"
    );
}

pub async fn ping_succeeds(repo: &dyn UserRepo) {
    repo.ping().await.unwrap();
}
