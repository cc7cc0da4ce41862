//! `delete-audit --older-than D [--dry-run]`: deletes the records last seen
//! longer ago than `D` (a record whose status is not written yet counts
//! from its creation).
//!
//! Nothing is deleted unless every delete may be done: the records are
//! listed in every context first, then the API server is asked
//! (SelfSubjectAccessReview) whether this user may `delete` records in each
//! namespace that has old ones; a refusal names the user, the verb, the
//! resource and the namespace, and the command stops there (exit 1).
//!
//! Each delete carries the record's resourceVersion as a precondition: a
//! record seen again between the list and the delete is kept. `--dry-run`
//! sends the same deletes as a server-side dry run (`dryRun=All`): RBAC and
//! admission answer as for real, nothing is deleted.

use std::collections::BTreeSet;
use std::io::Write;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use tracing::debug;

use crate::age::{human, since};
use crate::audit::list;
use crate::clusters::{Scope, Target};
use crate::config::DeleteAuditArgs;
use crate::error::PluginError;
use mapguard_api::resource::{GROUP, KIND, PLURAL};

use crate::records::{Record, where_};

/// Runs `delete-audit`; `Ok(false)` when something was refused or failed
/// (reported on `err`).
pub async fn run(
    args: &DeleteAuditArgs,
    targets: &[Target],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<bool, PluginError> {
    let now = Timestamp::now();
    let age = SignedDuration::try_from(args.older_than).unwrap_or(SignedDuration::MAX);
    let cutoff = now.checked_sub(age).unwrap_or(Timestamp::MIN);
    let several = targets.len() > 1;

    // 1. Everything old, in every context, before any delete.
    let mut old: Vec<(&Target, Vec<Record>)> = Vec::new();
    for target in targets {
        let mut records: Vec<Record> = list(target, args.cluster.selector.as_deref())
            .await?
            .into_iter()
            .filter(|r| r.last_seen().is_some_and(|t| t < cutoff))
            .collect();
        records.sort_by(Record::by_last_seen);
        if records.is_empty() {
            writeln!(
                err,
                "{}No MapViolation records last seen more than {} ago {}.",
                prefix(target, several),
                human(args.older_than),
                where_(&target.scope)
            )?;
        }
        old.push((target, records));
    }

    // 2. May this user delete them, in every namespace concerned?
    let mut refused = false;
    for (target, records) in &old {
        let namespaces: BTreeSet<&str> = records.iter().map(Record::namespace).collect();
        for namespace in namespaces {
            if let Some(refusal) = may_not_delete(target, namespace).await {
                writeln!(err, "error: {refusal}")?;
                refused = true;
            }
        }
    }
    if refused {
        return Ok(false);
    }

    // 3. Delete, each on the condition that it did not change.
    let mut complete = true;
    for (target, records) in &old {
        let api_of = |ns: &str| {
            Api::<kube::api::DynamicObject>::namespaced_with(
                target.client.clone(),
                ns,
                &crate::records::api_resource(),
            )
        };
        for record in records {
            let params = DeleteParams {
                dry_run: args.dry_run,
                preconditions: Some(Preconditions {
                    resource_version: record.object.metadata.resource_version.clone(),
                    uid: record.object.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            let seen = record
                .last_seen()
                .map_or_else(|| "never".to_owned(), |t| since(t, now) + " ago");
            let shown = format!(
                "{}{}.{GROUP}/{} in namespace {}",
                prefix(target, several),
                KIND.to_lowercase(),
                record.name(),
                record.namespace()
            );
            match api_of(record.namespace())
                .delete(record.name(), &params)
                .await
            {
                Ok(_) => {
                    let dry = if args.dry_run {
                        " (server dry run)"
                    } else {
                        ""
                    };
                    writeln!(out, "{shown} deleted{dry} (last seen {seen})")?;
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    writeln!(err, "{shown} kept: seen again since it was listed")?;
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    writeln!(err, "{shown} was deleted by someone else meanwhile")?;
                }
                Err(e) => {
                    let where_ = where_(&Scope::Namespace(record.namespace().to_owned()));
                    let e = PluginError::from_api(&target.context, "delete", &where_, e);
                    writeln!(err, "error: {e}")?;
                    complete = false;
                }
            }
        }
    }
    out.flush()?;
    Ok(complete)
}

fn prefix(target: &Target, several: bool) -> String {
    if several {
        format!("context {}: ", target.context)
    } else {
        String::new()
    }
}

/// Why this user may not delete records in `namespace` of `target`, if the
/// API server says so; `None` when allowed, or when it cannot say (the
/// deletes then meet RBAC themselves).
async fn may_not_delete(target: &Target, namespace: &str) -> Option<PluginError> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.to_owned()),
                resource: Some(PLURAL.to_owned()),
                verb: Some("delete".to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(target.client.clone())
        .create(&PostParams::default(), &review)
        .await;
    let status = match answer {
        Ok(review) => review.status?,
        Err(e) => {
            debug!(context = %target.context, error = %e, "no access review; the deletes will tell");
            return None;
        }
    };
    if status.allowed {
        return None;
    }
    let reason = status
        .reason
        .filter(|r| !r.is_empty())
        .map_or_else(String::new, |r| format!(" ({r})"));
    Some(PluginError::Forbidden {
        context: target.context.clone(),
        who: whoami(target).await,
        verb: "delete",
        where_: where_(&Scope::Namespace(namespace.to_owned())),
        detail: format!("{reason}; nothing was deleted"),
    })
}

/// `User "name"` as the API server knows this client, or "you".
async fn whoami(target: &Target) -> String {
    let review = SelfSubjectReview::default();
    match Api::<SelfSubjectReview>::all(target.client.clone())
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(SelfSubjectReview {
            status: Some(status),
            ..
        }) => status
            .user_info
            .and_then(|u| u.username)
            .map_or_else(|| "you".to_owned(), |name| format!("User {name:?}")),
        _ => "you".to_owned(),
    }
}
