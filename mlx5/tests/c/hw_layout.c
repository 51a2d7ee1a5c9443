/*
 * Prints the layout of every rdma-core struct that mlx5/src/hw/ffi.rs
 * declares, and the value of every constant it copies, as computed by the C
 * compiler from the real headers. One "name value" line each:
 *
 *   sizeof(T) N          alignof(T) N
 *   offsetof(T, f) N     sizeof(T.f) N
 *   NAME N
 *
 * tests/hw_layout.rs compares the lines with mlx5::layout_table(). Reads
 * nothing from stdin.
 */
#include <stddef.h>
#include <stdio.h>

#include <infiniband/mlx5dv.h>
#include <infiniband/verbs.h>

#define TYPE(kind, T)                                                          \
	printf("sizeof(%s) %zu\nalignof(%s) %zu\n", #T, sizeof(kind T), #T,    \
	       _Alignof(kind T))
#define FIELD(kind, T, f)                                                      \
	printf("offsetof(%s, %s) %zu\nsizeof(%s.%s) %zu\n", #T, #f,            \
	       offsetof(kind T, f), #T, #f, sizeof(((kind T *)0)->f))
#define CONST(name) printf("%s %llu\n", #name, (unsigned long long)(name))

#define S(T) TYPE(struct, T)
#define SF(T, f) FIELD(struct, T, f)

int main(void)
{
	TYPE(union, ibv_gid);
	FIELD(union, ibv_gid, raw);

	S(ibv_context);
	SF(ibv_context, device);
	SF(ibv_context, ops);
	SF(ibv_context, cmd_fd);
	SF(ibv_context, async_fd);
	SF(ibv_context, num_comp_vectors);
	SF(ibv_context, mutex);
	SF(ibv_context, abi_compat);

	S(ibv_async_event);
	SF(ibv_async_event, element);
	SF(ibv_async_event, element.cq);
	SF(ibv_async_event, element.qp);
	SF(ibv_async_event, element.srq);
	SF(ibv_async_event, element.wq);
	SF(ibv_async_event, element.port_num);
	SF(ibv_async_event, event_type);

	S(ibv_pd);
	SF(ibv_pd, context);
	SF(ibv_pd, handle);

	S(ibv_mr);
	SF(ibv_mr, context);
	SF(ibv_mr, pd);
	SF(ibv_mr, addr);
	SF(ibv_mr, length);
	SF(ibv_mr, handle);
	SF(ibv_mr, lkey);
	SF(ibv_mr, rkey);

	S(ibv_srq_attr);
	SF(ibv_srq_attr, max_wr);
	SF(ibv_srq_attr, max_sge);
	SF(ibv_srq_attr, srq_limit);

	S(ibv_srq_init_attr);
	SF(ibv_srq_init_attr, srq_context);
	SF(ibv_srq_init_attr, attr);
	SF(ibv_srq_init_attr, attr.max_wr);
	SF(ibv_srq_init_attr, attr.max_sge);
	SF(ibv_srq_init_attr, attr.srq_limit);

	S(ibv_srq);
	SF(ibv_srq, context);
	SF(ibv_srq, srq_context);
	SF(ibv_srq, pd);
	SF(ibv_srq, handle);
	SF(ibv_srq, mutex);
	SF(ibv_srq, cond);
	SF(ibv_srq, events_completed);

	S(ibv_qp_cap);
	SF(ibv_qp_cap, max_send_wr);
	SF(ibv_qp_cap, max_recv_wr);
	SF(ibv_qp_cap, max_send_sge);
	SF(ibv_qp_cap, max_recv_sge);
	SF(ibv_qp_cap, max_inline_data);

	S(ibv_qp_init_attr);
	SF(ibv_qp_init_attr, qp_context);
	SF(ibv_qp_init_attr, send_cq);
	SF(ibv_qp_init_attr, recv_cq);
	SF(ibv_qp_init_attr, srq);
	SF(ibv_qp_init_attr, cap);
	SF(ibv_qp_init_attr, qp_type);
	SF(ibv_qp_init_attr, sq_sig_all);

	S(ibv_qp);
	SF(ibv_qp, context);
	SF(ibv_qp, qp_context);
	SF(ibv_qp, pd);
	SF(ibv_qp, send_cq);
	SF(ibv_qp, recv_cq);
	SF(ibv_qp, srq);
	SF(ibv_qp, handle);
	SF(ibv_qp, qp_num);
	SF(ibv_qp, state);
	SF(ibv_qp, qp_type);
	SF(ibv_qp, mutex);
	SF(ibv_qp, cond);
	SF(ibv_qp, events_completed);

	S(ibv_global_route);
	SF(ibv_global_route, dgid);
	SF(ibv_global_route, flow_label);
	SF(ibv_global_route, sgid_index);
	SF(ibv_global_route, hop_limit);
	SF(ibv_global_route, traffic_class);

	S(ibv_ah_attr);
	SF(ibv_ah_attr, grh);
	SF(ibv_ah_attr, grh.dgid);
	SF(ibv_ah_attr, dlid);
	SF(ibv_ah_attr, sl);
	SF(ibv_ah_attr, src_path_bits);
	SF(ibv_ah_attr, static_rate);
	SF(ibv_ah_attr, is_global);
	SF(ibv_ah_attr, port_num);

	S(ibv_qp_attr);
	SF(ibv_qp_attr, qp_state);
	SF(ibv_qp_attr, cur_qp_state);
	SF(ibv_qp_attr, path_mtu);
	SF(ibv_qp_attr, path_mig_state);
	SF(ibv_qp_attr, qkey);
	SF(ibv_qp_attr, rq_psn);
	SF(ibv_qp_attr, sq_psn);
	SF(ibv_qp_attr, dest_qp_num);
	SF(ibv_qp_attr, qp_access_flags);
	SF(ibv_qp_attr, cap);
	SF(ibv_qp_attr, ah_attr);
	SF(ibv_qp_attr, ah_attr.grh.dgid);
	SF(ibv_qp_attr, ah_attr.grh.flow_label);
	SF(ibv_qp_attr, ah_attr.grh.sgid_index);
	SF(ibv_qp_attr, ah_attr.grh.hop_limit);
	SF(ibv_qp_attr, ah_attr.grh.traffic_class);
	SF(ibv_qp_attr, ah_attr.dlid);
	SF(ibv_qp_attr, ah_attr.sl);
	SF(ibv_qp_attr, ah_attr.is_global);
	SF(ibv_qp_attr, ah_attr.port_num);
	SF(ibv_qp_attr, alt_ah_attr);
	SF(ibv_qp_attr, pkey_index);
	SF(ibv_qp_attr, alt_pkey_index);
	SF(ibv_qp_attr, en_sqd_async_notify);
	SF(ibv_qp_attr, sq_draining);
	SF(ibv_qp_attr, max_rd_atomic);
	SF(ibv_qp_attr, max_dest_rd_atomic);
	SF(ibv_qp_attr, min_rnr_timer);
	SF(ibv_qp_attr, port_num);
	SF(ibv_qp_attr, timeout);
	SF(ibv_qp_attr, retry_cnt);
	SF(ibv_qp_attr, rnr_retry);
	SF(ibv_qp_attr, alt_port_num);
	SF(ibv_qp_attr, alt_timeout);
	SF(ibv_qp_attr, rate_limit);

	S(ibv_port_attr);
	SF(ibv_port_attr, state);
	SF(ibv_port_attr, max_mtu);
	SF(ibv_port_attr, active_mtu);
	SF(ibv_port_attr, gid_tbl_len);
	SF(ibv_port_attr, port_cap_flags);
	SF(ibv_port_attr, max_msg_sz);
	SF(ibv_port_attr, bad_pkey_cntr);
	SF(ibv_port_attr, qkey_viol_cntr);
	SF(ibv_port_attr, pkey_tbl_len);
	SF(ibv_port_attr, lid);
	SF(ibv_port_attr, sm_lid);
	SF(ibv_port_attr, lmc);
	SF(ibv_port_attr, max_vl_num);
	SF(ibv_port_attr, sm_sl);
	SF(ibv_port_attr, subnet_timeout);
	SF(ibv_port_attr, init_type_reply);
	SF(ibv_port_attr, active_width);
	SF(ibv_port_attr, active_speed);
	SF(ibv_port_attr, phys_state);
	SF(ibv_port_attr, link_layer);
	SF(ibv_port_attr, flags);
	SF(ibv_port_attr, port_cap_flags2);

	S(mlx5dv_qp);
	SF(mlx5dv_qp, dbrec);
	SF(mlx5dv_qp, sq);
	SF(mlx5dv_qp, sq.buf);
	SF(mlx5dv_qp, sq.wqe_cnt);
	SF(mlx5dv_qp, sq.stride);
	SF(mlx5dv_qp, rq);
	SF(mlx5dv_qp, rq.buf);
	SF(mlx5dv_qp, rq.wqe_cnt);
	SF(mlx5dv_qp, rq.stride);
	SF(mlx5dv_qp, bf);
	SF(mlx5dv_qp, bf.reg);
	SF(mlx5dv_qp, bf.size);
	SF(mlx5dv_qp, comp_mask);
	SF(mlx5dv_qp, uar_mmap_offset);
	SF(mlx5dv_qp, tirn);
	SF(mlx5dv_qp, tisn);
	SF(mlx5dv_qp, rqn);
	SF(mlx5dv_qp, sqn);
	SF(mlx5dv_qp, tir_icm_addr);

	S(mlx5dv_cq);
	SF(mlx5dv_cq, buf);
	SF(mlx5dv_cq, dbrec);
	SF(mlx5dv_cq, cqe_cnt);
	SF(mlx5dv_cq, cqe_size);
	SF(mlx5dv_cq, cq_uar);
	SF(mlx5dv_cq, cqn);
	SF(mlx5dv_cq, comp_mask);

	S(mlx5dv_srq);
	SF(mlx5dv_srq, buf);
	SF(mlx5dv_srq, dbrec);
	SF(mlx5dv_srq, stride);
	SF(mlx5dv_srq, head);
	SF(mlx5dv_srq, tail);
	SF(mlx5dv_srq, comp_mask);
	SF(mlx5dv_srq, srqn);

	S(mlx5dv_obj);
	SF(mlx5dv_obj, qp);
	SF(mlx5dv_obj, qp.in);
	SF(mlx5dv_obj, qp.out);
	SF(mlx5dv_obj, cq);
	SF(mlx5dv_obj, cq.in);
	SF(mlx5dv_obj, cq.out);
	SF(mlx5dv_obj, srq);
	SF(mlx5dv_obj, srq.in);
	SF(mlx5dv_obj, srq.out);
	SF(mlx5dv_obj, rwq);
	SF(mlx5dv_obj, rwq.in);
	SF(mlx5dv_obj, rwq.out);
	SF(mlx5dv_obj, dm);
	SF(mlx5dv_obj, dm.in);
	SF(mlx5dv_obj, dm.out);
	SF(mlx5dv_obj, ah);
	SF(mlx5dv_obj, ah.in);
	SF(mlx5dv_obj, ah.out);
	SF(mlx5dv_obj, pd);
	SF(mlx5dv_obj, pd.in);
	SF(mlx5dv_obj, pd.out);

	CONST(IBV_QPT_RC);
	CONST(IBV_QPT_UC);
	CONST(IBV_QPT_UD);

	CONST(IBV_QPS_RESET);
	CONST(IBV_QPS_INIT);
	CONST(IBV_QPS_RTR);
	CONST(IBV_QPS_RTS);
	CONST(IBV_QPS_SQD);
	CONST(IBV_QPS_SQE);
	CONST(IBV_QPS_ERR);
	CONST(IBV_QPS_UNKNOWN);

	CONST(IBV_QP_STATE);
	CONST(IBV_QP_CUR_STATE);
	CONST(IBV_QP_EN_SQD_ASYNC_NOTIFY);
	CONST(IBV_QP_ACCESS_FLAGS);
	CONST(IBV_QP_PKEY_INDEX);
	CONST(IBV_QP_PORT);
	CONST(IBV_QP_QKEY);
	CONST(IBV_QP_AV);
	CONST(IBV_QP_PATH_MTU);
	CONST(IBV_QP_TIMEOUT);
	CONST(IBV_QP_RETRY_CNT);
	CONST(IBV_QP_RNR_RETRY);
	CONST(IBV_QP_RQ_PSN);
	CONST(IBV_QP_MAX_QP_RD_ATOMIC);
	CONST(IBV_QP_ALT_PATH);
	CONST(IBV_QP_MIN_RNR_TIMER);
	CONST(IBV_QP_SQ_PSN);
	CONST(IBV_QP_MAX_DEST_RD_ATOMIC);
	CONST(IBV_QP_PATH_MIG_STATE);
	CONST(IBV_QP_CAP);
	CONST(IBV_QP_DEST_QPN);
	CONST(IBV_QP_RATE_LIMIT);

	CONST(IBV_ACCESS_LOCAL_WRITE);
	CONST(IBV_ACCESS_REMOTE_WRITE);
	CONST(IBV_ACCESS_REMOTE_READ);
	CONST(IBV_ACCESS_REMOTE_ATOMIC);

	CONST(IBV_MTU_256);
	CONST(IBV_MTU_512);
	CONST(IBV_MTU_1024);
	CONST(IBV_MTU_2048);
	CONST(IBV_MTU_4096);

	CONST(IBV_PORT_NOP);
	CONST(IBV_PORT_DOWN);
	CONST(IBV_PORT_INIT);
	CONST(IBV_PORT_ARMED);
	CONST(IBV_PORT_ACTIVE);
	CONST(IBV_PORT_ACTIVE_DEFER);

	CONST(IBV_LINK_LAYER_UNSPECIFIED);
	CONST(IBV_LINK_LAYER_INFINIBAND);
	CONST(IBV_LINK_LAYER_ETHERNET);

	CONST(IBV_EVENT_CQ_ERR);
	CONST(IBV_EVENT_QP_FATAL);
	CONST(IBV_EVENT_QP_REQ_ERR);
	CONST(IBV_EVENT_QP_ACCESS_ERR);
	CONST(IBV_EVENT_COMM_EST);
	CONST(IBV_EVENT_SQ_DRAINED);
	CONST(IBV_EVENT_PATH_MIG);
	CONST(IBV_EVENT_PATH_MIG_ERR);
	CONST(IBV_EVENT_DEVICE_FATAL);
	CONST(IBV_EVENT_PORT_ACTIVE);
	CONST(IBV_EVENT_PORT_ERR);
	CONST(IBV_EVENT_LID_CHANGE);
	CONST(IBV_EVENT_PKEY_CHANGE);
	CONST(IBV_EVENT_SM_CHANGE);
	CONST(IBV_EVENT_SRQ_ERR);
	CONST(IBV_EVENT_SRQ_LIMIT_REACHED);
	CONST(IBV_EVENT_QP_LAST_WQE_REACHED);
	CONST(IBV_EVENT_CLIENT_REREGISTER);
	CONST(IBV_EVENT_GID_CHANGE);
	CONST(IBV_EVENT_WQ_FATAL);

	CONST(MLX5DV_OBJ_QP);
	CONST(MLX5DV_OBJ_CQ);
	CONST(MLX5DV_OBJ_SRQ);

	CONST(MLX5DV_QP_MASK_UAR_MMAP_OFFSET);
	CONST(MLX5DV_QP_MASK_RAW_QP_HANDLES);
	CONST(MLX5DV_QP_MASK_RAW_QP_TIR_ADDR);
	CONST(MLX5DV_SRQ_MASK_SRQN);

	return 0;
}
