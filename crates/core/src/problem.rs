//! The catalogue of problem kinds every Spindle endpoint (the components and
//! the worker) answers with, as RFC 9457 problem documents. One table, so a
//! kind has one slug, one status and one title everywhere, and
//! `docs/problems.md` documents exactly these (a test checks it).

/// Every kind of problem Spindle reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A request field is invalid (the body, a query parameter, a header).
    Validation,
    /// The request body could not be read.
    Body,
    /// The request body is larger than the endpoint accepts.
    TooLarge,
    /// The request body is not JSON.
    MediaType,
    /// A credential is missing or wrong.
    Unauthorized,
    /// A callback's signature is missing or wrong.
    Signature,
    /// The caller is authenticated but its role does not allow the request.
    Forbidden,
    /// The caller sent more requests than its limit allows; retry later.
    RateLimited,
    /// Nothing at that path, or no such resource.
    NotFound,
    /// The route does not take that method.
    MethodNotAllowed,
    /// The request conflicts with the current state.
    Conflict,
    /// A resource of that name exists.
    Exists,
    /// An agent the request needs is being deleted.
    AgentDeleted,
    /// The agent is used by a workflow.
    AgentInUse,
    /// A worker's callback names a job that is no longer running.
    JobNotActive,
    /// The run is over.
    RunFinished,
    /// The step is not waiting for an approval.
    NotWaitingApproval,
    /// A worker already holds that job.
    Duplicate,
    /// A route reserved for a feature not built yet.
    NotImplemented,
    /// A fault of Spindle's own.
    Internal,
    /// A required setting is missing or malformed.
    Configuration,
    /// A dependency (the store) is unavailable, or the worker is full or
    /// shutting down; retry later.
    Unavailable,
    /// A webhook delivery carries no signature (or token) header.
    MissingSignature,
    /// A webhook delivery's signature matches none of the source's secrets.
    BadSignature,
    /// A webhook source signs a timestamp, and the delivery has none.
    MissingTimestamp,
    /// A webhook delivery's signed timestamp is outside the tolerance window.
    StaleTimestamp,
    /// A webhook delivery id seen before arrived with different content.
    Replay,
    /// No webhook source of that name is registered or configured.
    UnknownSource,
    /// A verified webhook delivery could not be read as an event.
    MalformedPayload,
    /// The approval's time ran out before the decision came.
    ApprovalExpired,
    /// This approver already decided on this approval.
    AlreadyDecided,
    /// The policy does not let whoever started a run approve its steps.
    SelfApproval,
    /// The decision names another input than the one waiting for approval.
    InputChanged,
    /// A signed approval link that is forged, malformed or expired.
    BadLink,
    /// A signed approval link that was used already.
    LinkUsed,
}

impl ProblemKind {
    /// Every kind, in the order `docs/problems.md` lists them.
    pub const ALL: [ProblemKind; 35] = [
        Self::Validation,
        Self::Body,
        Self::TooLarge,
        Self::MediaType,
        Self::Unauthorized,
        Self::Signature,
        Self::Forbidden,
        Self::RateLimited,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::Exists,
        Self::AgentDeleted,
        Self::AgentInUse,
        Self::JobNotActive,
        Self::RunFinished,
        Self::NotWaitingApproval,
        Self::Duplicate,
        Self::NotImplemented,
        Self::Internal,
        Self::Configuration,
        Self::Unavailable,
        Self::MissingSignature,
        Self::BadSignature,
        Self::MissingTimestamp,
        Self::StaleTimestamp,
        Self::Replay,
        Self::UnknownSource,
        Self::MalformedPayload,
        Self::ApprovalExpired,
        Self::AlreadyDecided,
        Self::SelfApproval,
        Self::InputChanged,
        Self::BadLink,
        Self::LinkUsed,
    ];

    /// The slug: the anchor in `docs/problems.md`.
    pub fn slug(self) -> &'static str {
        self.row().0
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        self.row().1
    }

    /// The title, the same for every occurrence.
    pub fn title(self) -> &'static str {
        self.row().2
    }

    /// The `type` URI: the kind's section of the problem catalogue, which
    /// every Spindle app serves at `/docs/problems`.
    pub fn type_uri(self) -> String {
        format!("/docs/problems#{}", self.slug())
    }

    fn row(self) -> (&'static str, u16, &'static str) {
        match self {
            Self::Validation => ("validation", 400, "Invalid request"),
            Self::Body => ("body", 400, "Unreadable request body"),
            Self::TooLarge => ("too-large", 413, "Request body too large"),
            Self::MediaType => ("media-type", 415, "Unsupported media type"),
            Self::Unauthorized => ("unauthorized", 401, "Unauthorized"),
            Self::Signature => ("signature", 401, "Bad signature"),
            Self::Forbidden => ("forbidden", 403, "Forbidden"),
            Self::RateLimited => ("rate-limited", 429, "Too many requests"),
            Self::NotFound => ("not-found", 404, "Not found"),
            Self::MethodNotAllowed => ("method-not-allowed", 405, "Method not allowed"),
            Self::Conflict => ("conflict", 409, "Conflict"),
            Self::Exists => ("exists", 409, "Already exists"),
            Self::AgentDeleted => ("agent-deleted", 409, "Agent is being deleted"),
            Self::AgentInUse => ("agent-in-use", 409, "Agent in use"),
            Self::JobNotActive => ("job-not-active", 409, "Job is not active"),
            Self::RunFinished => ("run-finished", 409, "Run is finished"),
            Self::NotWaitingApproval => (
                "not-waiting-approval",
                409,
                "Step is not waiting for approval",
            ),
            Self::Duplicate => ("duplicate", 409, "Job already held"),
            Self::NotImplemented => ("not-implemented", 501, "Not implemented yet"),
            Self::Internal => ("internal", 500, "Internal error"),
            Self::Configuration => ("configuration", 500, "Configuration error"),
            Self::Unavailable => ("unavailable", 503, "Service unavailable"),
            Self::MissingSignature => ("missing-signature", 401, "Signature missing"),
            Self::BadSignature => ("bad-signature", 401, "Signature does not match"),
            Self::MissingTimestamp => ("missing-timestamp", 401, "Timestamp missing"),
            Self::StaleTimestamp => ("stale-timestamp", 401, "Timestamp outside the window"),
            Self::Replay => ("replay", 409, "Delivery replayed with other content"),
            Self::UnknownSource => ("unknown-source", 404, "Unknown webhook source"),
            Self::MalformedPayload => ("malformed-payload", 400, "Malformed webhook payload"),
            Self::ApprovalExpired => ("approval-expired", 409, "Approval expired"),
            Self::AlreadyDecided => ("already-decided", 409, "Already decided by this approver"),
            Self::SelfApproval => ("self-approval", 403, "Requester may not approve"),
            Self::InputChanged => ("input-changed", 409, "Input differs from the one waiting"),
            Self::BadLink => ("bad-link", 401, "Approval link not valid"),
            Self::LinkUsed => ("link-used", 409, "Approval link already used"),
        }
    }

    /// The kind with this slug.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_unique_and_round_trip() {
        for k in ProblemKind::ALL {
            assert_eq!(ProblemKind::from_slug(k.slug()), Some(k));
            assert!((400..600).contains(&k.status()));
            assert_eq!(k.type_uri(), format!("/docs/problems#{}", k.slug()));
        }
        let mut slugs: Vec<_> = ProblemKind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemKind::ALL.len());
    }
}
