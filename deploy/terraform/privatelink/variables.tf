variable "name" {
  description = "Name prefix of the load balancer, target groups and endpoint service."
  type        = string
  default     = "tracegate"
}

variable "vpc_id" {
  description = "VPC of the gateway pods (or instances)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the Network Load Balancer, one per availability zone. Their CIDRs go into proxy_protocol.trusted_cidrs and the gateway NetworkPolicy."
  type        = list(string)
}

variable "target_type" {
  description = "\"ip\" for Kubernetes pods (registered by the TargetGroupBindings of deploy/kubernetes/overlays/aws-privatelink), \"instance\" for VMs."
  type        = string
  default     = "ip"
  validation {
    condition     = contains(["ip", "instance"], var.target_type)
    error_message = "target_type must be \"ip\" or \"instance\"."
  }
}

variable "listeners" {
  description = "NLB listener port => gateway port. TCP listeners: TLS passes through to tracegate, which terminates it."
  type = map(object({
    port        = number
    target_port = number
  }))
  default = {
    "otlp-http" = { port = 443, target_port = 4318 }
    "otlp-grpc" = { port = 4317, target_port = 4317 }
  }
}

variable "health_check_port" {
  description = "The gateway's admin listener (server.admin_addr); the health check GETs /readyz there without PROXY protocol."
  type        = number
  default     = 8888
}

variable "allowed_principals" {
  description = "AWS principals (ARNs) allowed to create interface endpoints to the service, e.g. arn:aws:iam::444455556666:root per customer account."
  type        = list(string)
  default     = []
}

variable "acceptance_required" {
  description = "Whether each customer's endpoint connection must be accepted (recommended: accept, then create its keys with --vpce)."
  type        = bool
  default     = true
}

variable "private_dns_name" {
  description = "Optional private DNS name of the endpoint service (e.g. otlp.eu-west-1.tracegate.example), verified through a TXT record."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Deletion protection of the NLB."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
