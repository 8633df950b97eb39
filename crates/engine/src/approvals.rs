//! Risk assessment and approvals on the store.
//!
//! Every step is assessed before its first dispatch ([`Engine::assess`],
//! the run's `Assess` effect): its input is rendered, scored against the
//! approval policy (`policy:approvals`, or the shipped default) and the
//! verdict goes back to the run as `Gated`. A step that needs approval gets
//! an [`Approval`] document and a listing pointer first, written with plain
//! writes: the run only learns of an approval whose document exists.
//!
//! Decisions are run transitions ([`Engine::decide`]): the run's
//! compare-and-swap settles approval, rejection and expiry races, and the
//! approved step's job is claimed by increment like every job. Signed links
//! carry one decision by a named approver; each is used at most once (an
//! increment on the token's digest).
//!
//! Listing walks the pointers down from the counter like the runs listing:
//! a bounded number of reads per request, nothing that grows per approval.

use spindle_core::approval::{
    self, Approval, ApprovalRef, ApprovalStatus, ApprovalView, GateRequest, LinkClaims, Verdict,
};
use spindle_core::keys;
use spindle_core::risk::{ApprovalPolicy, Assessor, Level};
use spindle_core::run::{Event, Prepared, Run};

use crate::dispatch::Render;
use crate::runs::MAX_SCAN;
use crate::store::StoreExt;
use crate::{Engine, EngineError, Host, Store, Workers};

/// The approval policy compiled last, and its compiled rules: compiling
/// costs milliseconds (several in Wasm), and every step is assessed.
#[derive(Debug, Default)]
struct AssessorCache(std::sync::Mutex<Option<(ApprovalPolicy, Assessor)>>);

/// Which approvals to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApprovalFilter {
    /// Only in this status.
    pub status: Option<ApprovalStatus>,
    /// Only of this run.
    pub run: Option<String>,
    /// Only of this workflow.
    pub workflow: Option<String>,
    /// Only at this level.
    pub level: Option<Level>,
    /// Page size.
    pub limit: usize,
    /// Continue after this cursor.
    pub cursor: Option<String>,
}

/// One page of approvals, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalPage {
    /// The approvals.
    pub approvals: Vec<ApprovalView>,
    /// Where the next page starts, if there may be more.
    pub next_cursor: Option<String>,
}

/// A decision as a caller asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRequest {
    /// Approve or reject.
    pub decision: Verdict,
    /// Who decides.
    pub by: String,
    /// The caller's role (wire name), checked against the policy's
    /// approver roles; `None` for a signed link, whose minter vouched for
    /// the approver it names.
    pub role: Option<String>,
    /// Why.
    pub comment: String,
    /// The input digest the approver saw, if they sent it.
    pub input_sha256: Option<String>,
    /// Whether it comes through a signed link.
    pub via_link: bool,
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionResult {
    /// The last approval needed: the step was dispatched.
    ApprovedAndDispatched,
    /// Recorded; more approvers must approve.
    WaitingForApprovers,
    /// Rejected: the step failed, and with it the run.
    Rejected,
    /// Approved, but the step could not be dispatched (see the run).
    ApprovedNotDispatched,
}

/// A decision's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// What happened.
    pub result: DecisionResult,
    /// Approvals still needed.
    pub remaining: usize,
    /// The approval afterwards.
    pub approval: ApprovalView,
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// The approval policy in force: the stored one, or the shipped default.
    pub async fn approval_policy(&self) -> Result<ApprovalPolicy, EngineError> {
        Ok(self
            .store
            .get::<ApprovalPolicy>(keys::APPROVAL_POLICY)
            .await?
            .unwrap_or_default())
    }

    /// Stores a checked approval policy; it applies to assessments from now
    /// on (waiting approvals keep the terms they were asked under).
    pub async fn put_approval_policy(&self, policy: &ApprovalPolicy) -> Result<(), EngineError> {
        policy.check()?;
        self.store.set(keys::APPROVAL_POLICY, policy).await?;
        Ok(())
    }

    /// Goes back to the shipped default policy.
    pub async fn reset_approval_policy(&self) -> Result<(), EngineError> {
        self.store.delete(keys::APPROVAL_POLICY).await?;
        Ok(())
    }

    /// Assesses `step` of `run`: what the run must learn (its verdict, or
    /// that its input cannot be built), or nothing when the store failed
    /// (the step's assess timer asks again).
    pub(crate) async fn assess(&self, run: &Run, step: &str) -> Option<Event> {
        let (agent, _, _) = run.agent_for(step)?;
        let fallback = run.step(step).map_or(0, |s| s.fallback);
        let prepared = match self.read_outputs(run, step).await {
            Ok(outputs) => run.prepare(step, outputs),
            Err(Render::Invalid(error)) => Err(error),
            Err(Render::Store(e)) => {
                self.host
                    .log(&format!("run {} step {step}: assessment: {e}", run.id));
                return None;
            }
        };
        let failed = |error, agent_refused| Event::AssessFailed {
            step: step.to_owned(),
            error,
            fallback,
            agent_refused,
        };
        let input = match prepared {
            Ok(Prepared::Input(v)) => v,
            Ok(Prepared::Skip(reason)) => {
                return Some(Event::Skip {
                    step: step.to_owned(),
                    reason,
                    fallback,
                });
            }
            Ok(Prepared::Expand(items)) => {
                return Some(Event::Expand {
                    step: step.to_owned(),
                    items,
                    fallback,
                });
            }
            Ok(Prepared::Refused(error)) => return Some(failed(error, true)),
            Err(error) => return Some(failed(error, false)),
        };
        let policy = match self.approval_policy().await {
            Ok(p) => p,
            Err(e) => {
                self.host.log(&format!(
                    "run {} step {step}: reading the policy: {e}",
                    run.id
                ));
                return None;
            }
        };
        let assessor = self.assessor(&policy)?;
        let assessment = assessor.assess(agent.risk_level, &input);
        let input_sha256 = approval::input_digest(&input);
        let level_policy = *policy.levels.of(assessment.level);
        let mut req = GateRequest {
            level: assessment.level,
            score: assessment.score,
            matched: assessment.matched.iter().map(|m| m.rule.clone()).collect(),
            rules_checked: assessment.rules_checked,
            input_sha256: input_sha256.clone(),
            approval: None,
            policy: level_policy,
            allow_self_approval: policy.allow_self_approval,
        };
        if assessment.approval_required {
            let id = approval::approval_id(&run.id, step, fallback);
            let doc = Approval {
                id: id.clone(),
                run_id: run.id.clone(),
                workflow: run.workflow.clone(),
                step: step.to_owned(),
                agent: agent.name.to_string(),
                agent_version: agent.version,
                asked: format!(
                    "run agent {} v{} as step {step} of workflow {} (run {})",
                    agent.name, agent.version, run.workflow, run.id
                ),
                preview: approval::preview(&input),
                input,
                input_sha256,
                level: assessment.level,
                score: assessment.score,
                matched: assessment.matched,
                rules_checked: assessment.rules_checked,
                requested_by: run.trigger.actor.clone(),
                approver_roles: policy.approver_roles.clone(),
                created_at_ms: self.host.now_ms(),
            };
            match self.file_approval(&doc).await {
                Ok(seq) => req.approval = Some(ApprovalRef { id, seq }),
                Err(e) => {
                    self.host.log(&format!("approval {id}: not stored: {e}"));
                    return None;
                }
            }
        }
        Some(Event::Gated {
            step: step.to_owned(),
            gate: req,
            fallback,
        })
    }

    /// The policy compiled, from the cache when it is the policy compiled
    /// last. The cache lives as long as the component instance (the local
    /// host reuses an instance for many requests; `spin up` makes one per
    /// request, where it still serves every step a request assesses). It
    /// holds no state: it is keyed by the whole policy, read from the store
    /// for every assessment, so a changed policy is compiled anew at once.
    fn assessor(&self, policy: &ApprovalPolicy) -> Option<Assessor> {
        static COMPILED: AssessorCache = AssessorCache(std::sync::Mutex::new(None));
        let mut cache = COMPILED
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, assessor)) = cache.as_ref()
            && cached == policy
        {
            return Some(assessor.clone());
        }
        let assessor = match policy.compile() {
            Ok(a) => a,
            Err(e) => {
                // Checked when stored; a policy that no longer compiles
                // (written by hand, or by an older version) must not let
                // steps through unassessed.
                self.host.log(&format!(
                    "the stored approval policy does not compile ({e}); assessing with the default"
                ));
                ApprovalPolicy::default().compile().ok()?
            }
        };
        *cache = Some((policy.clone(), assessor.clone()));
        Some(assessor)
    }

    /// Files an approval under a new listing number: its input, its
    /// document, then its listing pointer. Returns the number.
    async fn file_approval(&self, doc: &Approval) -> Result<u64, EngineError> {
        let seq = self.store.increment(&keys::approval_counter(), 1).await? as u64;
        self.store
            .set(&keys::approval_input(&doc.id, seq), &doc.input)
            .await?;
        let summary = Approval {
            input: serde_json::Value::Null,
            ..doc.clone()
        };
        self.store
            .set(&keys::approval(&doc.id, seq), &summary)
            .await?;
        self.store.set(&keys::approval_at(seq), &doc.id).await?;
        Ok(seq)
    }

    /// Forgets what an assessment filed for approval `id` under `seq`.
    pub(crate) async fn forget_approval(&self, id: &str, seq: u64) -> Result<(), EngineError> {
        for key in [
            keys::approval_at(seq),
            keys::approval(id, seq),
            keys::approval_input(id, seq),
        ] {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Forgets what an assessment the run did not record filed (another
    /// one won, or the step moved on): the listing would skip it, and
    /// retention only knows the recorded one.
    pub(crate) async fn drop_unrecorded_pointer(&self, run: &Run, event: &Event) {
        let Event::Gated { step, gate, .. } = event else {
            return;
        };
        let Some(mine) = &gate.approval else {
            return;
        };
        let recorded = run
            .step(step)
            .and_then(|s| s.gate.as_ref())
            .and_then(|g| g.approval.as_ref())
            .map(|a| a.seq);
        if recorded != Some(mine.seq)
            && let Err(e) = self.forget_approval(&mine.id, mine.seq).await
        {
            self.host.log(&format!(
                "approval {}: removing an unrecorded filing: {e}",
                mine.id
            ));
        }
    }

    /// An approval with where it stands, and the input it asks about.
    pub async fn approval(&self, id: &str) -> Result<ApprovalView, EngineError> {
        let (mut view, seq) = self.recorded(id).await?;
        view.approval.input = self
            .store
            .get(&keys::approval_input(id, seq))
            .await?
            .unwrap_or_default();
        Ok(view)
    }

    /// The approval the run recorded under `id` (without its input), and
    /// its listing number.
    async fn recorded(&self, id: &str) -> Result<(ApprovalView, u64), EngineError> {
        let not_found = || EngineError::NotFound(format!("no approval {id:?}"));
        let (run_id, _) = approval::parse_approval_id(id).ok_or_else(not_found)?;
        let run = match self.run(run_id).await {
            Ok(run) => run,
            Err(EngineError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let seq = recorded_seq(&run, id).ok_or_else(not_found)?;
        let doc: Approval = self
            .store
            .get(&keys::approval(id, seq))
            .await?
            .ok_or_else(not_found)?;
        let view = ApprovalView::of(doc, &run, self.host.now_ms()).ok_or_else(not_found)?;
        Ok((view, seq))
    }

    /// Lists approvals newest first, per `filter`; looks at most at
    /// [`MAX_SCAN`] of them per request.
    pub async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<ApprovalPage, EngineError> {
        if let Some(run_id) = &filter.run {
            return self.run_approvals(run_id, filter).await;
        }
        let top = self.store.counter(&keys::approval_counter()).await? as u64;
        let start = match filter.cursor.as_deref().and_then(crate::runs::parse_cursor) {
            Some(after) => after.saturating_sub(1).min(top),
            None => top,
        };
        let mut approvals = Vec::new();
        let mut looked = 0;
        let mut n = start;
        while n > 0 {
            if approvals.len() == filter.limit || looked == MAX_SCAN {
                return Ok(ApprovalPage {
                    approvals,
                    next_cursor: Some((n + 1).to_string()),
                });
            }
            looked += 1;
            let seq = n;
            n -= 1;
            let Some(id) = self.store.get::<String>(&keys::approval_at(seq)).await? else {
                continue;
            };
            let Some(view) = self.view_at(&id, Some(seq)).await? else {
                continue;
            };
            if matches(filter, &view) {
                approvals.push(view);
            }
        }
        Ok(ApprovalPage {
            approvals,
            next_cursor: None,
        })
    }

    /// One run's approvals, from the run itself (no listing walk).
    async fn run_approvals(
        &self,
        run_id: &str,
        filter: &ApprovalFilter,
    ) -> Result<ApprovalPage, EngineError> {
        let run = match self.run(run_id).await {
            Ok(run) => run,
            Err(EngineError::NotFound(_)) => {
                return Ok(ApprovalPage {
                    approvals: Vec::new(),
                    next_cursor: None,
                });
            }
            Err(e) => return Err(e),
        };
        // Newest first, and paged like the whole listing (a cursor is the
        // listing number to stay below): a fan-out can file hundreds.
        let below = filter
            .cursor
            .as_deref()
            .and_then(crate::runs::parse_cursor)
            .unwrap_or(u64::MAX);
        let mut refs: Vec<&ApprovalRef> = run
            .units()
            .filter_map(|s| s.gate.as_ref().and_then(|g| g.approval.as_ref()))
            .filter(|a| a.seq < below)
            .collect();
        refs.sort_by_key(|a| std::cmp::Reverse(a.seq));
        let mut approvals = Vec::new();
        for (looked, a) in refs.iter().enumerate() {
            if approvals.len() == filter.limit || looked == MAX_SCAN {
                return Ok(ApprovalPage {
                    approvals,
                    next_cursor: Some(a.seq.saturating_add(1).to_string()),
                });
            }
            if let Some(doc) = self
                .store
                .get::<Approval>(&keys::approval(&a.id, a.seq))
                .await?
                && let Some(view) = ApprovalView::of(doc, &run, self.host.now_ms())
                && matches(filter, &view)
            {
                approvals.push(view);
            }
        }
        Ok(ApprovalPage {
            approvals,
            next_cursor: None,
        })
    }

    /// The view of approval `id`, if its document and run exist and (when
    /// `seq` is given) the run recorded it under that listing number.
    async fn view_at(
        &self,
        id: &str,
        seq: Option<u64>,
    ) -> Result<Option<ApprovalView>, EngineError> {
        let Some((run_id, _)) = approval::parse_approval_id(id) else {
            return Ok(None);
        };
        let Some(run) = self.store.get::<Run>(&keys::run(run_id)).await? else {
            return Ok(None);
        };
        let Some(recorded) = recorded_seq(&run, id) else {
            return Ok(None);
        };
        if seq.is_some_and(|s| s != recorded) {
            return Ok(None);
        }
        let Some(doc) = self
            .store
            .get::<Approval>(&keys::approval(id, recorded))
            .await?
        else {
            return Ok(None);
        };
        Ok(ApprovalView::of(doc, &run, self.host.now_ms()))
    }

    /// Decides on approval `id`. Exactly one of approval, rejection and
    /// expiry ends the wait (the run's compare-and-swap orders them); a
    /// decision the run refuses (decided, expired, the same approver again,
    /// self-approval) changes nothing.
    pub async fn decide(&self, id: &str, req: DecisionRequest) -> Result<Decided, EngineError> {
        let not_found = || EngineError::NotFound(format!("no approval {id:?}"));
        let (run_id, step) = approval::parse_approval_id(id).ok_or_else(not_found)?;
        let (before, _) = self.recorded(id).await?;
        let doc = before.approval;
        if let Some(role) = &req.role
            && !doc.approver_roles.iter().any(|r| r == role)
        {
            return Err(EngineError::Forbidden(format!(
                "role {role} may not decide approvals (the policy allows: {})",
                doc.approver_roles.join(", ")
            )));
        }
        let run = self
            .apply(
                run_id,
                Event::Decide {
                    step: step.to_owned(),
                    approval: id.to_owned(),
                    decision: req.decision,
                    by: req.by,
                    comment: req.comment,
                    via_link: req.via_link,
                    input_sha256: req.input_sha256,
                },
            )
            .await?;
        let view = ApprovalView::of(doc, &run, self.host.now_ms()).ok_or_else(not_found)?;
        let remaining = usize::from(view.approvers_needed).saturating_sub(view.approvals);
        // What the decision did, from the run as it stored it (not from the
        // clock, which may have passed the expiry since).
        let s = run.step(step).ok_or_else(not_found)?;
        let gate = s.gate.as_ref().ok_or_else(not_found)?;
        let result = match gate.status() {
            ApprovalStatus::Rejected => DecisionResult::Rejected,
            ApprovalStatus::Pending => DecisionResult::WaitingForApprovers,
            // An attempt sent once approved: not one of an agent the step
            // fell back from.
            _ if s
                .current()
                .is_some_and(|a| gate.decided_at_ms.is_some_and(|d| a.dispatched_at_ms >= d)) =>
            {
                DecisionResult::ApprovedAndDispatched
            }
            // Approved, but the dispatch was refused (the input is not the
            // one approved) or the run ended meanwhile.
            _ => DecisionResult::ApprovedNotDispatched,
        };
        Ok(Decided {
            result,
            remaining,
            approval: view,
        })
    }

    /// A signed link deciding approval `id` as `by`, valid until `exp_ms`
    /// (never past the approval's own expiry).
    pub async fn approval_link(
        &self,
        id: &str,
        decision: Verdict,
        by: &str,
        key: Option<&str>,
        exp_ms: u64,
        nonce: &str,
    ) -> Result<(String, u64), EngineError> {
        let (view, _) = self.recorded(id).await?;
        if view.status != ApprovalStatus::Pending {
            return Err(EngineError::Rejected(
                spindle_core::run::Reject::NotWaitingApproval {
                    step: view.approval.step,
                },
            ));
        }
        let exp_ms = view.expires_at_ms.map_or(exp_ms, |e| e.min(exp_ms));
        let claims = LinkClaims {
            approval: id.to_owned(),
            decision,
            by: by.to_owned(),
            key: key.map(str::to_owned),
            exp_ms,
            nonce: nonce.to_owned(),
        };
        Ok((approval::sign_link(&self.config.secret, &claims), exp_ms))
    }

    /// Checks a link without using it: what it would do.
    pub fn read_link(&self, token: &str) -> Result<LinkClaims, EngineError> {
        approval::verify_link(&self.config.secret, token, self.host.now_ms())
            .map_err(EngineError::Link)
    }

    /// Uses a signed link: its decision, recorded as the approver it names.
    /// A link works once; a second use gets [`EngineError::LinkUsed`].
    pub async fn use_link(&self, token: &str, comment: String) -> Result<Decided, EngineError> {
        let claims = self.read_link(token)?;
        let digest = spindle_core::sign::digest(token.as_bytes());
        let claim = keys::approval_link_claim(&digest);
        if self.store.increment(&claim, 1).await? != 1 {
            return Err(EngineError::LinkUsed);
        }
        // The claim goes when the link would have expired anyway.
        if let Err(e) = self
            .expire_at(std::slice::from_ref(&claim), claims.exp_ms)
            .await
        {
            self.host
                .log(&format!("approval link claim: filing for expiry: {e}"));
        }
        let decided = self
            .decide(
                &claims.approval,
                DecisionRequest {
                    decision: claims.decision,
                    by: claims.by,
                    role: None,
                    comment,
                    input_sha256: None,
                    via_link: true,
                },
            )
            .await;
        if let Err(EngineError::Store(_)) = &decided {
            // Nothing was decided: give the link back so it can be used
            // again. (A second use racing this one is still decided once:
            // the run refuses the same approver twice.)
            let _ = self.store.increment(&claim, -1).await;
        }
        decided
    }
}

/// The listing number of the approval the run recorded for `step`.
/// The listing number of approval `id` if the run's unit still waits on
/// (or decided) that very approval: a fallback agent's approval has an id
/// of its own, so a decision on the primary's never answers it.
fn recorded_seq(run: &Run, id: &str) -> Option<u64> {
    let (_, step) = approval::parse_approval_id(id)?;
    run.step(step)
        .and_then(|s| s.gate.as_ref())
        .and_then(|g| g.approval.as_ref())
        .filter(|a| a.id == id)
        .map(|a| a.seq)
}

fn matches(filter: &ApprovalFilter, view: &ApprovalView) -> bool {
    filter.status.is_none_or(|s| view.status == s)
        && filter.level.is_none_or(|l| view.approval.level == l)
        && filter
            .workflow
            .as_ref()
            .is_none_or(|w| &view.approval.workflow == w)
}
