package idempotency

import "time"

// Option configures a Store or an Ordering.
type Option func(*options)

type options struct {
	now func() time.Time
}

func newOptions(opts []Option) options {
	o := options{now: time.Now}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithClock replaces time.Now, so tests can move time past a lease instead of
// sleeping. A nil clock keeps time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}
