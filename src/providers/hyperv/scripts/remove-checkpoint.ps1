# Remove a backup checkpoint with Remove-VMSnapshot (alias Remove-VMCheckpoint): Hyper-V merges
# the .avhdx back into its parent itself; no file is ever deleted here.
# Safe when already removed. Refuses to touch a checkpoint that is not ours (name vmbackup-*),
# unless AllowRecoveryType is set and the checkpoint is of SnapshotType Recovery.
# Args (ArgsJson): { VmId: guid, CheckpointId?: guid, SnapshotName?: "vmbackup-...", WaitSeconds: int, AllowRecoveryType?: bool }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vmId = ConvertTo-VmbGuid (Get-VmbArg $a 'VmId')
    $cpId = Get-VmbArg $a 'CheckpointId' -Optional
    if ($cpId) { $cpId = ConvertTo-VmbGuid $cpId }
    $name = [string](Get-VmbArg $a 'SnapshotName' -Optional)
    if (-not $cpId -and -not $name) { throw (New-Object System.ArgumentException 'CheckpointId or SnapshotName is required') }
    if ($name -and $name -cnotmatch '^vmbackup-[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$') { throw (New-Object System.ArgumentException "SnapshotName '$name' is not vmbackup-<backupId>") }
    $waitSeconds = [int](Get-VmbArg $a 'WaitSeconds' -Optional)
    $allowRecovery = [bool](Get-VmbArg $a 'AllowRecoveryType' -Optional)

    # Listing instead of Get-VM -Id: "no such VM" must not be confused with any other error.
    $vm = @(Hyper-V\Get-VM | Where-Object { $_.Id -eq $vmId })[0]
    if ($null -eq $vm) {
        # Not on this node: in a cluster it may have moved (its checkpoint, not merged, with it):
        # that throws. Only a VM no node owns is gone, and its checkpoints with it.
        Assert-VmbNotMoved $vmId
        $out = [ordered]@{ VmFound = $false; Removed = @(); AlreadyRemoved = $true; MergePending = $false; WaitedMs = 0; State = $null }
    } else {
        $targets = @(Get-VmbCheckpoints $vm | Where-Object {
            ($cpId -and ([string]$_.Id -eq [string]$cpId)) -or ($name -and $_.Name -ceq $name)
        })
        $removed = New-Object System.Collections.Generic.List[object]
        foreach ($cp in $targets) {
            $ours = ([string]$cp.Name) -cmatch '^vmbackup-'
            $recovery = ([string]$cp.SnapshotType) -eq 'Recovery'
            if (-not $ours -and -not ($allowRecovery -and $recovery)) {
                throw (New-Object System.InvalidOperationException ("refusing to remove checkpoint '" + $cp.Name + "' (" + $cp.Id + "): not a vmbackup-* checkpoint"))
            }
            $info = Get-VmbCheckpointInfo $cp
            Hyper-V\Remove-VMSnapshot -VMSnapshot $cp -Confirm:$false
            $removed.Add($info)
        }
        $wait = Wait-VmbMerge $vmId $waitSeconds
        $out = [ordered]@{
            VmFound        = $true
            Removed        = @($removed.ToArray())
            AlreadyRemoved = ($targets.Count -eq 0)
            MergePending   = $wait.mergePending
            WaitedMs       = $wait.waitedMs
            State          = Get-VmbVmState $wait.vm
        }
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
