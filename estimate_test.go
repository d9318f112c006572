package tollgate

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The spread of n calls beyond the mean counts the mean's own error, which
// all n share: with one reply of 100 tokens, the calls are taken to vary by
// half of it, and so is the mean; with three samples of 80, 100 and 120 (sample deviation 20,
// the mean's 20/√3), one call varies by √(20² + 20²/3) and four by
// 20·√(4 + 16/3).
func TestTokenEstimateSumDeviationCountsTheMeansError(t *testing.T) {
	e := newProducedEstimate()
	_, ok := e.sumDeviation(1)
	assert.False(t, ok, "nothing learned")
	e.learn(100)
	one, ok := e.sumDeviation(1)
	assert.True(t, ok)
	assert.InDelta(t, 50*math.Sqrt(2), one, 1e-9, "one sample: half the mean, for the call and for the mean")

	e = newProducedEstimate()
	for _, x := range []float64{80, 100, 120} {
		e.learn(x)
	}
	one, _ = e.sumDeviation(1)
	assert.InDelta(t, math.Sqrt(400+400.0/3), one, 1e-9)
	four, _ := e.sumDeviation(4)
	assert.InDelta(t, 20*math.Sqrt(4+16.0/3), four, 1e-9)

	// Once the weight is at its least, the mean weighs about 1/w samples.
	for range 1000 {
		e.learn(100)
	}
	assert.InDelta(t, producedLearnWeight/(2-producedLearnWeight), e.squaredWeights, 1e-9)
}

// The margin that output counted as produced is admitted on covers what
// the calls in flight produce beyond their charge: replies drawn uniformly
// from 100–600 tokens, four in flight, each charged the learned mean
// (rounded up), exceed estimateMargin spreads in fewer than 3 admissions in
// 1,000 (without the second's refill the margin adds on top). Charged the
// mean of the last few replies and covered for their own spread alone
// (3σ√n, a least weight of minLearnWeight), they exceeded it in 24.
func TestProducedMarginCoversTheCallsInFlight(t *testing.T) {
	const inFlight, steps = 4, 50_000
	rng := rand.New(rand.NewPCG(1, 2))
	reply := func() float64 { return float64(100 + rng.IntN(501)) }
	e := newProducedEstimate()
	for range 30 {
		e.learn(reply())
	}
	over := 0
	for range steps {
		spread, _ := e.sumDeviation(inFlight)
		sum := 0.0
		for range inFlight {
			sum += reply()
		}
		if sum-inFlight*math.Ceil(e.mean) > estimateMargin*spread {
			over++
		}
		e.learn(reply())
	}
	assert.Less(t, float64(over)/steps, 0.003, "%d of %d admissions", over, steps)
}
