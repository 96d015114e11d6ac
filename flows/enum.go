package flows

import "github.com/flowmap/flowmap/model"

// The programs number counting points, L7 protocols and HTTP methods as
// the model does: these fail to compile (a constant index out of range)
// the day either side renumbers one, so the mappings below are plain
// conversions.
var (
	_ = [1]struct{}{}[bpfPointPOINT_NONE-bpfPoint(model.PointNone)]
	_ = [1]struct{}{}[bpfPointPOINT_TC_INGRESS-bpfPoint(model.PointTCIngress)]
	_ = [1]struct{}{}[bpfPointPOINT_TC_EGRESS-bpfPoint(model.PointTCEgress)]
	_ = [1]struct{}{}[bpfPointPOINT_XDP-bpfPoint(model.PointXDPIngress)]

	_ = [1]struct{}{}[bpfL7ProtoL7NONE-bpfL7Proto(model.L7None)]
	_ = [1]struct{}{}[bpfL7ProtoL7HTTP-bpfL7Proto(model.L7HTTP)]
	_ = [1]struct{}{}[bpfL7ProtoL7HTTP2-bpfL7Proto(model.L7HTTP2)]
	_ = [1]struct{}{}[bpfL7ProtoL7TLS-bpfL7Proto(model.L7TLS)]
	_ = [1]struct{}{}[bpfL7ProtoL7DNS-bpfL7Proto(model.L7DNS)]
	_ = [1]struct{}{}[bpfL7ProtoL7POSTGRES-bpfL7Proto(model.L7Postgres)]
	_ = [1]struct{}{}[bpfL7ProtoL7MYSQL-bpfL7Proto(model.L7MySQL)]
	_ = [1]struct{}{}[bpfL7ProtoL7REDIS-bpfL7Proto(model.L7Redis)]
	_ = [1]struct{}{}[bpfL7ProtoL7KAFKA-bpfL7Proto(model.L7Kafka)]

	_ = [1]struct{}{}[bpfL7MethodMETHOD_OTHER-bpfL7Method(model.MethodOther)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_GET-bpfL7Method(model.MethodGET)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_HEAD-bpfL7Method(model.MethodHEAD)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_POST-bpfL7Method(model.MethodPOST)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_PUT-bpfL7Method(model.MethodPUT)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_DELETE-bpfL7Method(model.MethodDELETE)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_PATCH-bpfL7Method(model.MethodPATCH)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_OPTIONS-bpfL7Method(model.MethodOPTIONS)]
	_ = [1]struct{}{}[bpfL7MethodMETHOD_MAX-bpfL7Method(model.NumMethods)]
)

// pointOf maps the programs' counting point to the model's.
func pointOf(p bpfPoint) model.Point { return model.Point(p) }

// l7ProtocolOf maps the programs' L7 protocol to the model's.
func l7ProtocolOf(p bpfL7Proto) model.L7Protocol { return model.L7Protocol(p) }

// l7Protos is L7_PROTOS, the stride of the l7_lost map's index: reason ×
// l7Protos + protocol.
const l7Protos = 16

var _ = [1]struct{}{}[l7Protos/int(model.NumL7Protocols)-1] // the model's protocols fit in the stride

// l7LossNames name the reasons of l7_lost for /metrics.
var l7LossNames = [bpfL7LossL7LOSS_MAX]string{
	bpfL7LossL7LOSS_MAP_FULL:  "map_full",
	bpfL7LossL7LOSS_NO_MEMORY: "no_memory",
	bpfL7LossL7LOSS_BUSY:      "busy",
	bpfL7LossL7LOSS_OTHER:     "other",
}
