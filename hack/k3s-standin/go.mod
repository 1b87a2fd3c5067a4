module vnest.dev/k3s-standin

go 1.26
