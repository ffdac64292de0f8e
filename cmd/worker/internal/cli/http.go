package cli

import (
	"encoding/json"
	"net/http"
)

// WriteJSON answers with v as JSON: the probes' and the simulator's bodies.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
