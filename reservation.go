package tollgate

import (
	"context"
	"time"

	"github.com/tollgate-go/tollgate/internal/reqscan"
)

// This file holds what one attempt has of its Key's budget: its reservation,
// from admission until it is settled (settle.go), and its place in the queue
// while it waits (budget.go admits, priority.go and tenant.go order it).

// A reservation is what one attempt holds of its Key's budget, from
// admission until it is settled.
type reservation struct {
	p           *pool
	info        *requestInfo           // the request's
	cost        [NumDimensions]float64 // what the attempt asks for
	charged     [NumDimensions]float64 // what it is charged now
	sentAt      time.Time              // when it may be sent, on this process's clock
	endedAt     time.Time              // when its response ended; zero until then
	promptBytes int64
	images      int64
	maxTokens   int64
	model       string
	// producedBy is when the headers of its JSON reply came, by which the
	// server had produced all its output; zero for a stream, and until
	// then.
	producedBy time.Time
	// blocks is the prompt in cache order when it has breakpoints;
	// cachedBytes the part of it predicted read from the cache.
	blocks       []reqscan.Block
	cachedBytes  int64
	cachedTokens int64            // cachedBytes at the learned ratio
	writes       []uint64         // the prefixes it is expected to write to the cache
	output       OutputAccounting // how its output is counted
	// need is what the buckets must hold to admit it, where not its cost
	// (Admission.Need).
	need [NumDimensions]float64
	// counted is what the server counted of it, input and output, once
	// settled.
	counted [2]int64
	// What tells the output rule (settle.go): whether it was alone in
	// flight when admitted, the output level then (-1: unknown), and its
	// response's output-tokens remaining and limit.
	alone                  bool
	outputBefore           float64
	outRemaining, outLimit float64

	// store is the store that admitted it, stored what that store holds of
	// it per dimension, and storeSentAt when it may be sent on the store's
	// clock.
	store       Store
	stored      [NumDimensions]float64
	storeHas    [NumDimensions]bool // the store had a bucket (a limit) for it when it admitted r
	storeSentAt time.Time
	// floor holds what a response said remains, per dimension, until it is
	// given to the store; outAtReading is the output the server had
	// counted of r when it said so.
	floor        [NumDimensions]float64
	hasFloor     [NumDimensions]bool
	outAtReading float64
	// readAt is when the server is taken to have read what remains: at
	// the headers, unless the response shows it read at the send
	// (learnLocked).
	readAt time.Time
	// returnedAt is the pool's returned when r was granted, and returned
	// what of it is r's own: the rest since is what the server gave back
	// of the other attempts while r was out (othersReturned).
	returnedAt, returned [NumDimensions]float64
	// started says how the bucket of a dimension started from r's own
	// response (startedFrom), so that what r is charged after counts
	// there: startCharge is r's charge it started with, credited how much
	// the level has of the changes since.
	started     [NumDimensions]startedFrom
	startCharge [NumDimensions]float64
	credited    [NumDimensions]float64

	status   int  // the response status, once headers arrived
	watched  bool // its output is charged as its stream shows it (produced)
	slot     bool // holds a place among the attempts in flight
	probe    bool // holds the cold-start gate
	refunded bool // gave everything back (429)
	settled  bool

	waiter waiter // its place in the queue, while it waits for admission
}

// startedFrom says what a bucket learned from an attempt's response started
// at.
type startedFrom uint8

const (
	notStarted   startedFrom = iota
	startReading             // what the response said remains: it counted r as the server had then
	startBound               // the limit less r's charge: the bucket held at most its limit before r
)

// A waiter is an attempt queued for admission. Its fields are guarded by
// the pool's mutex.
type waiter struct {
	ctx context.Context // the attempt's, for the store calls made on its behalf

	// Its place in the queue (priority.go, tenant.go): its class's rank, its
	// tenant and fair-share tag, when it arrived (seq: in what order), and,
	// once admitted, what its tenant's tag counted it to cost. aged says it
	// has waited the aging period and goes in arrival order.
	rank     int
	tenant   *tenantState
	tag      float64
	fairCost float64
	seq      uint64
	arrived  time.Time
	aged     bool
	served   bool // admitted: its tenant counts it in flight until it settles
	learned  bool // an Interactive attempt whose cost went into the headroom's unit

	asking  bool      // the store is being asked on its behalf (the head, pinned)
	granted bool      // the store granted it (the head, pinned, while it waits for sendAt)
	sendAt  time.Time // granted: when it may be sent (later than now when granted ahead of time)
	retryAt time.Time // not granted: when to ask the store again, where timed
	timed   bool
	// heldFrom is when it first waited for an attempt in flight that is
	// writing its prompt's prefix to the cache (cacheHoldLocked); held says
	// it waits for one now.
	heldFrom time.Time
	held     bool
	// deadline is when WithMaxQueueWait gives up on it; zero without a cap.
	deadline time.Time
	// pausedFor is how long it has waited so far on pauses the server
	// asked for, which WithMaxPause bounds (its waits in the queue do not
	// count); pausedAt is when its wait on one began, zero while it waits
	// on none.
	pausedFor time.Duration
	pausedAt  time.Time
	err       error // why it cannot be admitted: ctx's error, a pause it cannot wait out, the queue-wait cap

	// woken says the head's wait may be shorter now: it asks the store
	// again. wake carries the news to a head that is blocked (capacity 1;
	// made when the waiter first blocks).
	woken bool
	wake  chan struct{}
}

// endsBefore reports whether w's wait ends, by its queue-wait cap or its
// context's deadline, before until (both on tollgate's clock at now).
func (w *waiter) endsBefore(now, until time.Time) bool {
	return (!w.deadline.IsZero() && w.deadline.Before(until)) || outlasts(w.ctx, until.Sub(now))
}
