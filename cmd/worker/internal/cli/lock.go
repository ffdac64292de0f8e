package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// lockFile, in the data directory, is locked (flock) by the one process
// that runs the embedded server on it. It holds that process's pid and
// role, for the message of the next one. It is never removed: removing it
// would let a third process lock a new file while the old one is held.
const lockFile = "worker.lock"

// Lock holder roles, as written into the lock file.
const (
	roleWorker   = "worker"
	roleOperator = "operator"
)

// LockedError is a data directory whose embedded server another process
// runs: exit code 2. PID is 0 when that process had not written it yet.
type LockedError struct {
	Dir  string
	PID  int
	Role string // "worker", or "operator" for a command's short-lived server
}

func (e *LockedError) Error() string {
	who := "another process"
	if e.PID > 0 {
		who = "process " + strconv.Itoa(e.PID)
	}
	if e.Role == roleOperator {
		who += " (an operator command with its own short-lived NATS server)"
	} else {
		who = "worker " + who
	}
	return fmt.Sprintf("KEYWORKER_DATA_DIR %s is in use by %s: one worker per data directory; stop it or set another KEYWORKER_DATA_DIR", e.Dir, who)
}

// dirLock is a held data-directory lock. The kernel releases it when the
// process dies, so a crashed worker leaves no stale lock behind.
type dirLock struct{ f *os.File }

// lockDataDir takes dir's lock without waiting. A lock held by another
// process (or another open of the file in this one) is a *LockedError.
func lockDataDir(dir, role string) (*dirLock, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
	}
	ok, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("KEYWORKER_DATA_DIR: locking %s: %w", path, err)
	}
	if !ok {
		e := &LockedError{Dir: dir}
		e.PID, e.Role = readHolder(f)
		f.Close()
		return nil, e
	}
	if err = f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+" "+role+"\n"), 0)
	}
	if err != nil {
		unlock(f)
		f.Close()
		return nil, fmt.Errorf("KEYWORKER_DATA_DIR: writing %s: %w", path, err)
	}
	return &dirLock{f: f}, nil
}

// release unlocks; the file stays (see lockFile).
func (l *dirLock) release() {
	unlock(l.f)
	l.f.Close()
}

func readHolder(f *os.File) (pid int, role string) {
	b := make([]byte, 64)
	n, _ := f.ReadAt(b, 0)
	fields := strings.Fields(string(b[:n]))
	if len(fields) > 0 {
		pid, _ = strconv.Atoi(fields[0])
	}
	if len(fields) > 1 {
		role = fields[1]
	}
	return pid, role
}
